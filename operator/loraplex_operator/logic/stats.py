"""Sidecar /v1/stats: parse one document, sum a pool's sidecars, poll them.

The document is inference_pod/router_stats.py's: each client request is
counted once, at the sidecar it entered (a pod or the gateway), so summing
over every sidecar of a namespace gives each pool's load without double
counting. Parsing is pure and forgiving: a field that is missing or of the
wrong type is treated as absent, never as an error that stops scaling.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loraplex_operator.logic.residency import PodResidency, parse_resident


@dataclass(frozen=True)
class PoolLoad:
    request_rate: float = 0.0
    mean_service_s: float = 0.0
    in_flight: int = 0
    last_request_time: float | None = None


@dataclass(frozen=True)
class AdapterLoad:
    pool: str
    request_rate: float = 0.0
    last_request_time: float | None = None


@dataclass(frozen=True)
class StatsSnapshot:
    pools: dict[str, PoolLoad] = field(default_factory=dict)
    adapters: dict[str, AdapterLoad] = field(default_factory=dict)
    sources: int = 0  # sidecars that answered
    resident: PodResidency | None = None  # one pod's adapters by tier (`residency`); None: not reported


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return default
    return float(value)


def _time(value: Any) -> float | None:
    t = _num(value, -1.0)
    return t if t > 0 else None


def parse_stats(doc: Any) -> StatsSnapshot:
    """One sidecar's /v1/stats document, validated field by field."""
    if not isinstance(doc, dict):
        return StatsSnapshot()
    pools = {}
    for name, p in (doc.get("pools") or {}).items() if isinstance(doc.get("pools"), dict) else ():
        if isinstance(name, str) and isinstance(p, dict):
            pools[name] = PoolLoad(
                _num(p.get("requestRate")),
                _num(p.get("meanServiceSeconds")),
                int(_num(p.get("inFlight"))),
                _time(p.get("lastRequestTime")),
            )
    adapters = {}
    for name, a in (doc.get("adapters") or {}).items() if isinstance(doc.get("adapters"), dict) else ():
        if isinstance(name, str) and isinstance(a, dict) and isinstance(a.get("pool"), str):
            adapters[name] = AdapterLoad(a["pool"], _num(a.get("requestRate")), _time(a.get("lastRequestTime")))
    return StatsSnapshot(pools, adapters, 1, parse_resident(doc.get("resident")))


def _latest(times: Iterable[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def aggregate(snapshots: Sequence[StatsSnapshot]) -> StatsSnapshot:
    """Sum over sidecars; service time is the rate-weighted mean (a plain mean when all are idle).

    Residency is per pod and is not summed here (see `residency.aggregate`)."""
    pools: dict[str, PoolLoad] = {}
    for name in sorted({n for s in snapshots for n in s.pools}):
        parts = [s.pools[name] for s in snapshots if name in s.pools]
        rate = sum(p.request_rate for p in parts)
        if rate > 0:
            mean = sum(p.request_rate * p.mean_service_s for p in parts) / rate
        else:
            known = [p.mean_service_s for p in parts if p.mean_service_s > 0]
            mean = sum(known) / len(known) if known else 0.0
        pools[name] = PoolLoad(rate, mean, sum(p.in_flight for p in parts), _latest(p.last_request_time for p in parts))
    adapters: dict[str, AdapterLoad] = {}
    for name in sorted({n for s in snapshots for n in s.adapters}):
        parts_a = [s.adapters[name] for s in snapshots if name in s.adapters]
        adapters[name] = AdapterLoad(
            parts_a[-1].pool, sum(a.request_rate for a in parts_a), _latest(a.last_request_time for a in parts_a)
        )
    return StatsSnapshot(pools, adapters, sum(s.sources for s in snapshots))
