"""Router counters: windowed rates, service-time means, in-flight, the /v1/stats shape, metrics."""

from __future__ import annotations

import json

import pytest
from prometheus_client import generate_latest

from inference_pod.router.stats import RouterStats, WindowCounter


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make() -> tuple[RouterStats, Clock]:
    clock = Clock()
    stats = RouterStats(pod="pod-0", window_s=60, clock=clock, wall=lambda: 1.7e9 + clock.t)
    return stats, clock


def test_window_counter_forgets_old_buckets() -> None:
    w = WindowCounter(10)
    for t in range(100, 120):
        w.add(t + 0.5, 2.0)
    assert w.totals(120.0) == (10, 20.0)  # buckets 110..119
    assert w.totals(120.5) == (10, 20.0)  # 1 s granularity: bucket 110 still overlaps
    assert w.totals(200) == (0, 0.0)


def test_rate_uses_uptime_until_a_full_window() -> None:
    stats, clock = make()
    clock.t += 10
    for _ in range(20):
        stats.request_started("sdxl", ["a"])
    # 20 arrivals in the first 10 s: 2/s, not 20/60.
    assert stats.snapshot()["pools"]["sdxl"]["requestRate"] == pytest.approx(2.0)
    clock.t += 100
    for _ in range(30):
        stats.request_started("sdxl", [])
    snap = stats.snapshot()
    assert snap["pools"]["sdxl"]["requestRate"] == pytest.approx(0.5)
    assert snap["adapters"]["a"]["requestRate"] == 0
    assert snap["adapters"]["a"]["requests"] == 20
    assert snap["pools"]["sdxl"]["requests"] == 50


def test_in_flight_service_latency_errors() -> None:
    stats, clock = make()
    stats.request_started("sdxl", ["a", "b"])
    stats.request_started("sdxl", ["a"])
    snap = stats.snapshot()
    assert snap["pools"]["sdxl"]["inFlight"] == 2
    assert snap["adapters"]["a"]["inFlight"] == 2 and snap["adapters"]["b"]["inFlight"] == 1
    assert snap["adapters"]["b"]["lastRequestTime"] == pytest.approx(1.7e9 + 1000)
    stats.request_finished("sdxl", ["a", "b"], 200, latency_s=3.0, service_s=2.0, overhead_s=0.001)
    stats.request_finished("sdxl", ["a"], 503, latency_s=1.0, service_s=None)
    pool = stats.snapshot()["pools"]["sdxl"]
    assert pool["inFlight"] == 0 and pool["errors"] == 1
    assert pool["meanServiceSeconds"] == pytest.approx(2.0)
    assert pool["meanLatencySeconds"] == pytest.approx(2.0)
    # Idle for longer than the window: the lifetime mean is still reported.
    clock.t += 600
    pool = stats.snapshot()["pools"]["sdxl"]
    assert pool["meanServiceSeconds"] == pytest.approx(2.0)
    assert pool["requestRate"] == 0 and pool["meanLatencySeconds"] == 0


def test_snapshot_shape_is_json() -> None:
    stats, _ = make()
    stats.table_loaded(7, adapters=3, reload_s=0.012)
    stats.table_error()
    stats.rejected(404)
    stats.request_started("tiny", [])
    stats.waiting("tiny", +1)
    stats.served("tiny")
    snap = json.loads(json.dumps(stats.snapshot()))
    assert set(snap) == {
        "pod",
        "mode",
        "time",
        "uptimeSeconds",
        "windowSeconds",
        "rejected",
        "table",
        "pools",
        "adapters",
    }
    assert snap["table"] == {
        "loaded": True,
        "generation": 7,
        "lastReloadTime": pytest.approx(1.7e9 + 1000),
        "reloadErrors": 1,
        "adapters": 3,
        "lastReloadSeconds": 0.012,
    }
    assert set(snap["pools"]["tiny"]) == {
        "requestRate",
        "meanServiceSeconds",
        "meanLatencySeconds",
        "inFlight",
        "waiting",
        "requests",
        "errors",
        "served",
        "lastRequestTime",
    }
    assert snap["pools"]["tiny"]["waiting"] == 1 and snap["pools"]["tiny"]["served"] == 1
    assert snap["rejected"] == 1 and snap["pod"] == "pod-0" and snap["mode"] == "pod"


def test_metrics_on_private_registry() -> None:
    a, _ = make()
    b, _ = make()  # a second instance in the same process must not collide
    a.request_started("sdxl", ["pixel"])
    a.request_finished("sdxl", ["pixel"], 200, 1.0, 0.5, 0.002)
    a.attempt("sdxl", "retry_connect")
    text = generate_latest(a.registry).decode()
    assert 'loraplex_router_requests_total{code="200",pool="sdxl"} 1.0' in text
    assert 'loraplex_router_adapter_requests_total{adapter="pixel",pool="sdxl"} 1.0' in text
    assert 'loraplex_router_upstream_attempts_total{outcome="retry_connect",pool="sdxl"} 1.0' in text
    assert "loraplex_router_overhead_seconds_count 1.0" in text
    assert "pixel" not in generate_latest(b.registry).decode()


def test_adapter_series_are_capped_and_stable() -> None:
    clock = Clock()
    stats = RouterStats(pod="pod-0", clock=clock, wall=clock, max_adapter_series=2)
    for name in ("a", "b", "c", "d", "a", "c"):
        stats.request_started("sdxl", [name])
        stats.request_finished("sdxl", [name], 200, 0.1)
    stats.request_started("tiny", ["a"])  # a new (pool, adapter) pair past the cap
    text = generate_latest(stats.registry).decode()
    assert 'loraplex_router_adapter_requests_total{adapter="a",pool="sdxl"} 2.0' in text
    assert 'loraplex_router_adapter_requests_total{adapter="b",pool="sdxl"} 1.0' in text
    assert 'loraplex_router_adapter_requests_total{adapter="_other",pool="sdxl"} 3.0' in text
    assert 'loraplex_router_adapter_requests_total{adapter="_other",pool="tiny"} 1.0' in text
    assert 'adapter="c"' not in text and 'adapter="d"' not in text
    # /v1/stats keeps every adapter for the operator
    assert set(stats.snapshot()["adapters"]) == {"a", "b", "c", "d"}
    # a pool's gauges exist at 0 from its first request
    assert 'loraplex_router_waiting_requests{pool="sdxl"} 0.0' in text
