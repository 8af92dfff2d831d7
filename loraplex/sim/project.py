"""The project's own code that the simulator drives, imported in one place.

The simulator runs the router's placement, the adapter tiers' LRU, the
sidecar's request counters and the operator's sizing and spec parsing: the
same pure modules the real processes run (tests/unit/test_import_rules.py
allows `loraplex.sim` these imports and no others).
"""

from __future__ import annotations

import inference_pod.router.placement as placement
from inference_pod.adapters.lru import BudgetExceeded, BudgetLRU
from inference_pod.router.stats import RouterStats, WindowCounter
from loraplex_operator.logic import sizing, specs, stats

Load = sizing.Load
ScalingPolicy = sizing.ScalingPolicy
adapter_replication = sizing.adapter_replication
decide = sizing.decide
raw_replicas = sizing.raw_replicas
stabilized_need = sizing.stabilized_need
PoolSpec = specs.PoolSpec
parse_pool_spec = specs.parse_pool_spec
parse_adapter_spec = specs.parse_adapter_spec
parse_stats = stats.parse_stats
aggregate = stats.aggregate

__all__ = [
    "BudgetExceeded",
    "BudgetLRU",
    "Load",
    "PoolSpec",
    "RouterStats",
    "ScalingPolicy",
    "WindowCounter",
    "adapter_replication",
    "aggregate",
    "decide",
    "parse_adapter_spec",
    "parse_pool_spec",
    "parse_stats",
    "placement",
    "raw_replicas",
    "sizing",
    "specs",
    "stabilized_need",
    "stats",
]
