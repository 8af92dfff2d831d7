"""The cost policy the sidecar and the simulator share: candidate order, attempt plan, load view, swap costs."""

from __future__ import annotations

import pytest

import loraplex.sim.fleet as fleet
import loraplex.sim.policies as policies
from inference_pod.router.forwarding import parse_load
from inference_pod.router.loadview import LoadView, SwapCosts
from inference_pod.router.placement import attempt_plan, choose_endpoint_cost, rank_endpoints

PODS = ["p0", "p1", "p2", "p3"]
RANKED = rank_endpoints("lora", PODS)  # RANKED[0] is the home (replication 1)
H, A, B, C = RANKED


@pytest.mark.parametrize(
    ("view", "replication", "service_s", "home_s", "cold_s", "first"),
    [
        ({}, 1, 8.5, 0.003, 0.7, H),  # idle pool: the home (warm cache)
        ({H: 1}, 1, 8.5, 0.003, 0.7, A),  # a busy home loses to an idle pod: 8.5 s wait > 0.7 s fetch
        ({H: 1}, 1, 0.5, 0.003, 0.7, H),  # ... unless the fetch costs more than the wait
        ({H: 1, A: 1}, 1, 8.5, 0.003, 0.7, B),  # the next idle pod, by rank
        ({H: 1}, 2, 8.5, 0.003, 0.7, A),  # second home: warm and idle
        ({H: 2, A: 1, B: 1, C: 1}, 1, 8.5, 0.003, 0.7, A),  # all busy: the least queued work
        ({H: 1, A: 1, B: 1, C: 1}, 1, 8.5, 0.003, 0.7, H),  # equal queues: the warm home
    ],
)
def test_cost_order(view: dict, replication: int, service_s: float, home_s: float, cold_s: float, first: str) -> None:
    out = choose_endpoint_cost("lora", PODS, replication, view, service_s, {}, home_s, cold_s)
    assert out[0] == first
    assert sorted(out) == sorted(PODS)  # every pod stays a fallback


def test_cost_order_uses_known_tiers_and_ignores_endpoint_order() -> None:
    out = choose_endpoint_cost("lora", PODS, 1, {H: 1}, 8.5, {C: 0.0}, 0.003, 0.7)
    assert out[:2] == [C, A]  # C holds it in a slot: cheaper than A's fetch
    assert choose_endpoint_cost("lora", list(reversed(PODS)), 1, {H: 1}, 8.5, {}, 0.003, 0.7) == (
        choose_endpoint_cost("lora", PODS, 1, {H: 1}, 8.5, {}, 0.003, 0.7)
    )
    assert choose_endpoint_cost("lora", [], 1, {}, 1.0, {}, 0.0, 0.0) == []


@pytest.mark.parametrize(
    ("cands", "max_attempts", "probes", "plan"),
    [
        ("abcde", 4, 3, [("a", 1), ("b", 1), ("c", 1), ("a", 0)]),  # 3 probes, then the plain choice
        ("ab", 4, 3, [("a", 1), ("b", 1), ("a", 0), ("b", 0)]),  # 2 pods: 2 probes, then both plainly
        ("abcde", 3, 3, [("a", 1), ("b", 1), ("a", 0)]),  # one plain attempt is always kept
        ("abcde", 3, 0, [("a", 0), ("b", 0), ("c", 0)]),  # the shipped router: no probes
        ("a", 4, 3, [("a", 0)]),  # one pod: nothing to probe for
        ("abc", 1, 3, [("a", 0)]),
        ("abc", 0, 3, [("a", 0)]),
        ("", 4, 3, []),
    ],
)
def test_attempt_plan(cands: str, max_attempts: int, probes: int, plan: list) -> None:
    assert attempt_plan(list(cands), max_attempts, probes) == [(e, bool(i)) for e, i in plan]


def test_the_simulator_runs_the_sidecars_functions() -> None:
    assert policies.choose_endpoint_cost is choose_endpoint_cost
    assert policies.attempt_plan is attempt_plan
    assert fleet.IMPROVED.routing == "cost" and fleet.IMPROVED.idle_probe == 3 and fleet.IMPROVED.max_attempts == 4


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_load_view_merges_reports_own_sends_and_the_exact_local_count() -> None:
    clock = Clock()
    v = LoadView(max_age_s=2.0, clock=clock)
    own = {"p1": 1}
    assert v.view(PODS, own, local="p0", local_load=2) == {"p0": 2, "p1": 1}  # nothing reported: own counts
    v.report("p2", 3)
    v.sent("p2")
    assert v.view(PODS, own, local="p0", local_load=0)["p2"] == 4  # report + sent since
    v.report("p1", 0)  # a report lower than our own in-flight there is stale: ours are still there
    assert v.view(PODS, own)["p1"] == 1
    v.report("p2", 1)  # a new report replaces the sends counted since the last
    assert v.view(PODS, {})["p2"] == 1
    clock.t += 2.5  # too old: only what this sidecar knows
    assert v.view(PODS, {}) == {}
    v.report("p3", 5)
    v.forget(["p0", "p1"])
    assert v.view(PODS, {}) == {}


def test_load_reports_are_ordered_by_the_peers_version() -> None:
    clock = Clock()
    v = LoadView(max_age_s=2.0, clock=clock)
    v.report("p1", 0, version=8)  # the answer after its last job...
    v.report("p1", 1, version=7)  # ... then a poll measured during that job arrives late: ignored
    assert v.view(PODS, {}) == {}
    v.report("p1", 2, version=9)
    assert v.view(PODS, {}) == {"p1": 2}
    clock.t += 2.5
    v.report("p1", 1, version=1)  # the peer restarted: a lower version is taken once the last report is old
    assert v.view(PODS, {}) == {"p1": 1}
    assert [parse_load(x) for x in ("3 1042", "3", "", None, "x", "3 y")] == [
        (3, 1042),
        (3, None),
        None,
        None,
        None,
        None,
    ]


def test_swap_costs_learn_from_the_workers_timings() -> None:
    s = SwapCosts(home_s=0.005, cold_s=0.5, alpha=0.5)
    s.observe(0.001, 0.0)  # warm: the RAM -> slot copy
    assert s.home_s == pytest.approx(0.003) and s.cold_s == 0.5
    s.observe(0.002, 0.098)  # fetched first: a cold pod's cost
    assert s.cold_s == pytest.approx(0.3) and s.home_s == pytest.approx(0.003)
    s.observe(None, 9.0)
    s.observe(9.0, None)
    assert (s.home_s, s.cold_s) == (pytest.approx(0.003), pytest.approx(0.3))
