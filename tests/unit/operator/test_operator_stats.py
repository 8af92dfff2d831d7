"""Sidecar /v1/stats parsing and aggregation, against the real RouterStats document."""

from __future__ import annotations

from inference_pod.router.stats import RouterStats
from loraplex_operator.controllers.leader import LeaseRecord, lease_action
from loraplex_operator.logic.stats import aggregate, parse_stats


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _sidecar(pod: str, requests: int, service_s: float, clock: Clock, adapter: str = "pixel") -> RouterStats:
    stats = RouterStats(pod=pod, window_s=60.0, clock=clock, wall=clock)
    for _ in range(requests):
        stats.request_started("sdxl", [adapter])
        stats.request_finished("sdxl", [adapter], 200, latency_s=service_s + 0.1, service_s=service_s)
    return stats


def test_parse_the_real_router_stats_document() -> None:
    clock = Clock()
    doc = _sidecar("sdxl-0", 6, 2.0, clock).snapshot()
    clock.t += 60
    snap = parse_stats(doc)
    assert snap.sources == 1
    p = snap.pools["sdxl"]
    assert p.request_rate > 0 and p.mean_service_s == 2.0 and p.in_flight == 0
    assert p.last_request_time == 1000.0
    assert snap.adapters["pixel"].pool == "sdxl"


def test_aggregate_sums_rates_and_weights_service_time() -> None:
    clock = Clock()
    a = parse_stats(_sidecar("a", 30, 1.0, clock).snapshot())
    b = parse_stats(_sidecar("b", 10, 5.0, clock, adapter="other").snapshot())
    total = aggregate([a, b])
    pool = total.pools["sdxl"]
    assert abs(pool.request_rate - (a.pools["sdxl"].request_rate + b.pools["sdxl"].request_rate)) < 1e-9
    assert abs(pool.mean_service_s - (30 * 1.0 + 10 * 5.0) / 40) < 1e-9
    assert set(total.adapters) == {"pixel", "other"} and total.sources == 2


def test_garbage_is_no_data_not_an_error() -> None:
    for doc in (
        None,
        [],
        "x",
        {"pools": "nope"},
        {"pools": {"p": {"requestRate": "fast", "inFlight": -3}}},
        {"adapters": {"a": {"requestRate": 1}}},
    ):
        snap = parse_stats(doc)
        for p in snap.pools.values():
            assert p.request_rate == 0.0 and p.in_flight == 0
        assert not snap.adapters
    assert aggregate([]).pools == {}


def test_idle_pool_keeps_a_service_time_estimate() -> None:
    idle = parse_stats({"pools": {"p": {"requestRate": 0, "meanServiceSeconds": 3.0}}})
    assert aggregate([idle, parse_stats({"pools": {"p": {}}})]).pools["p"].mean_service_s == 3.0


def test_lease_actions() -> None:
    mine = LeaseRecord("me", 15, "t", 0)
    theirs = LeaseRecord("them", 15, "t", 0)
    assert lease_action(None, "me", 0) == "create"
    assert lease_action(mine, "me", 100) == "renew"
    assert lease_action(theirs, "me", 5) == "wait"
    assert lease_action(theirs, "me", 15) == "acquire"  # unchanged for a whole lease: expired
    assert lease_action(LeaseRecord("", 15, "t", 0), "me", 0) == "acquire"  # released
