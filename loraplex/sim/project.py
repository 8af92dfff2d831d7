"""The project's own code that the simulator drives, imported in one place.

The current module paths first, then the ones after the move into
subpackages (inference_pod.router.placement, inference_pod.adapters.lru,
inference_pod.router.stats, loraplex_operator.logic.*), so the simulator
runs the same code either side of that change.
"""

from __future__ import annotations

try:
    from inference_pod import placement
except ImportError:  # after the subpackage move
    from inference_pod.router import placement  # type: ignore[no-redef]

try:
    from inference_pod.lru import BudgetExceeded, BudgetLRU
except ImportError:
    from inference_pod.adapters.lru import BudgetExceeded, BudgetLRU  # type: ignore[no-redef]

try:
    from inference_pod.router_stats import RouterStats, WindowCounter
except ImportError:
    from inference_pod.router.stats import RouterStats, WindowCounter  # type: ignore[no-redef]

try:
    from loraplex_operator import sizing, specs, stats
except ImportError:
    from loraplex_operator.logic import sizing, specs, stats  # type: ignore[no-redef]

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
    "BudgetExceeded", "BudgetLRU", "Load", "PoolSpec", "RouterStats", "ScalingPolicy", "WindowCounter",
    "adapter_replication", "aggregate", "decide", "parse_adapter_spec", "parse_pool_spec", "parse_stats",
    "placement", "raw_replicas", "sizing", "specs", "stabilized_need", "stats",
]
