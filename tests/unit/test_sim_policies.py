"""The simulator's new pure policies: tier-aware and cost routing, churn budget, latency-target sizing, prefetch."""

from __future__ import annotations

import math

import pytest

from loraplex.sim.policies import (
    COLD,
    FREE_SLOT,
    IN_RAM,
    IN_SLOT,
    budget_replication,
    choose_endpoint_cost,
    choose_endpoint_tiered,
    erlang_c,
    home_prefetch,
    latency_raw_replicas,
    wait_exceeds,
    wait_quantile_replicas,
)
from loraplex.sim.project import placement

choose_endpoint, home_endpoints, rank_endpoints = (
    placement.choose_endpoint,
    placement.home_endpoints,
    placement.rank_endpoints,
)

PODS = [f"pod-{i}" for i in range(6)]


def test_tiered_prefers_slot_then_ram_then_free_slot_among_pods_under_the_bound() -> None:
    ranked = rank_endpoints("a", PODS)
    home, second = ranked[0], ranked[1]
    tiers = {e: COLD for e in PODS}
    # Two homes: the second holds it in a slot, the first only in RAM -> the second.
    tiers[home], tiers[second] = IN_RAM, IN_SLOT
    assert choose_endpoint_tiered("a", PODS, 2, {}, 1.25, tiers.__getitem__)[0] == second
    # A non-home pod with it in a slot (a spill left it there) beats a home with a free slot.
    tiers = {e: COLD for e in PODS}
    tiers[home] = FREE_SLOT
    tiers[ranked[4]] = IN_SLOT
    assert choose_endpoint_tiered("a", PODS, 1, {}, 1.25, tiers.__getitem__)[0] == ranked[4]
    # A cold non-home is never preferred over the home.
    tiers = {e: FREE_SLOT for e in PODS}
    tiers[home] = COLD
    assert choose_endpoint_tiered("a", PODS, 1, {}, 1.25, tiers.__getitem__)[0] == home


def test_tiered_never_picks_a_pod_over_the_bound_and_keeps_all_candidates() -> None:
    ranked = rank_endpoints("a", PODS)
    tiers = {e: COLD for e in PODS}
    tiers[ranked[3]] = IN_SLOT
    load = {ranked[3]: 9}
    out = choose_endpoint_tiered("a", PODS, 1, load, 1.25, tiers.__getitem__)
    assert out == choose_endpoint("a", PODS, 1, load, 1.25)
    assert sorted(out) == sorted(PODS)


def test_cost_routing_home_when_idle_idle_pod_when_home_is_busy() -> None:
    ranked = rank_endpoints("a", PODS)
    home = ranked[0]
    out = choose_endpoint_cost("a", PODS, 1, {}, 8.5, {}, home_s=0.003, cold_s=0.7)
    assert out[0] == home and sorted(out) == sorted(PODS)
    out = choose_endpoint_cost("a", PODS, 1, {home: 1}, 8.5, {}, home_s=0.003, cold_s=0.7)
    assert out[0] == ranked[1] and out[-1] == home
    # ... unless fetching it elsewhere costs more than the wait (a 2 s job, a 3 s load)
    out = choose_endpoint_cost("a", PODS, 1, {home: 1}, 2.0, {}, home_s=0.003, cold_s=3.0)
    assert out[0] == home
    # A pod known to hold it warm wins among idle pods.
    out = choose_endpoint_cost("a", PODS, 1, {home: 1}, 8.5, {ranked[5]: 0.0}, home_s=0.003, cold_s=0.7)
    assert out[0] == ranked[5]


def test_budget_replication() -> None:
    cur = {"a": 1, "b": 1, "c": 3, "d": 2}
    want = {"a": 4, "b": 2, "c": 1, "d": 2, "e": 1}
    demand = {"a": 0.5, "b": 0.9, "c": 0.01}
    assert budget_replication(cur, want, None, demand) == want
    out = budget_replication(cur, want, 1, demand)
    assert out == {"a": 1, "b": 2, "c": 3, "d": 2, "e": 1}  # the largest increase by demand first
    out = budget_replication(cur, want, 2, demand)
    assert out == {"a": 4, "b": 2, "c": 3, "d": 2, "e": 1}  # increases before decreases
    assert budget_replication(cur, want, 3, demand) == want


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(3, 3.0) == 1.0 and erlang_c(3, 0.0) == 0.0
    assert wait_exceeds(1, 0.5, 1.0, 0.0) == pytest.approx(0.5)
    assert wait_exceeds(1, 0.5, 1.0, 2.0) == pytest.approx(0.5 * math.exp(-1.0))


def test_wait_quantile_replicas_is_minimal_and_monotone() -> None:
    c = wait_quantile_replicas(0.2, 8.5, 0.85)
    assert wait_exceeds(c, 0.2, 8.5, 0.85) <= 0.05 < wait_exceeds(c - 1, 0.2, 8.5, 0.85)
    assert wait_quantile_replicas(0.4, 8.5, 0.85) >= c
    assert wait_quantile_replicas(0.2, 8.5, 5.0) <= c
    assert wait_quantile_replicas(0.0, 8.5, 0.85) == 0


def test_latency_raw_replicas_never_below_the_shipped_rule() -> None:
    from loraplex.sim.project import Load, raw_replicas

    for rate in (0.01, 0.1, 1.0, 10.0):
        shipped = raw_replicas(Load(rate, 8.5, 0), 0.7)
        assert latency_raw_replicas(rate, 8.5, 0, 0.7, None) == shipped
        assert latency_raw_replicas(rate, 8.5, 0, 0.7, 0.85) >= shipped


def test_home_prefetch_takes_this_pods_homes_by_demand_within_budget() -> None:
    adapters = [(f"x{i}", float(100 - i), 1, 10) for i in range(100)]
    mine = [n for n, *_ in adapters if home_endpoints(n, PODS, 1) == ["pod-2"]]
    assert home_prefetch("pod-2", PODS, adapters, 10_000) == mine
    assert home_prefetch("pod-2", PODS, adapters, 30) == mine[:3]


def test_inflight_raw_replicas() -> None:
    from loraplex.sim.policies import inflight_raw_replicas
    from loraplex.sim.project import Load, raw_replicas

    assert raw_replicas(Load(0.1, 8.5, 3), 0.7) == 5  # the shipped rule: ceil(3 / 0.7)
    assert inflight_raw_replicas(0.1, 8.5, 3, 0.7) == 3
    assert inflight_raw_replicas(0.1, 8.5, 3, 0.7, headroom=1) == 4
    assert inflight_raw_replicas(1.0, 8.5, 0, 0.7) == raw_replicas(Load(1.0, 8.5, 0), 0.7) == 13
    assert inflight_raw_replicas(0.0, 8.5, 0, 0.7, headroom=1) == 0
