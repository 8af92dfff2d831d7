"""Rendezvous placement: determinism, stability under scaling, balance, spill-over."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest

from inference_pod.router.placement import choose_endpoint, home_endpoints, load_limit, rank_endpoints, score

ADAPTERS = [f"adapter-{i}" for i in range(10_000)]


def pods(n: int) -> list[str]:
    return [f"pool-a-{i}" for i in range(n)]


def test_score_is_stable_across_processes() -> None:
    # Python's hash() is salted per process; the placement hash must not be.
    code = "from inference_pod.router.placement import score; print(score('lora-x', 'pod-1'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == score("lora-x", "pod-1")


def test_determinism_independent_of_endpoint_order() -> None:
    eps = pods(7)
    for key in ADAPTERS[:200]:
        assert home_endpoints(key, eps, 2) == home_endpoints(key, list(reversed(eps)), 2)
        assert rank_endpoints(key, eps) == rank_endpoints(key, sorted(eps, key=hash))


@pytest.mark.parametrize("n", [4, 10])
def test_adding_one_endpoint_moves_about_one_nth(n: int) -> None:
    before = {k: home_endpoints(k, pods(n), 1)[0] for k in ADAPTERS}
    after = {k: home_endpoints(k, pods(n + 1), 1)[0] for k in ADAPTERS}
    moved = [k for k in ADAPTERS if before[k] != after[k]]
    expected = len(ADAPTERS) / (n + 1)
    assert abs(len(moved) - expected) < 0.15 * expected
    # Every key that moved, moved to the new endpoint: nothing shuffles between old pods.
    assert all(after[k] == f"pool-a-{n}" for k in moved)


@pytest.mark.parametrize("n", [4, 10])
def test_removing_one_endpoint_moves_only_its_keys(n: int) -> None:
    eps = pods(n)
    gone = eps[n // 2]
    before = {k: home_endpoints(k, eps, 1)[0] for k in ADAPTERS}
    after = {k: home_endpoints(k, [e for e in eps if e != gone], 1)[0] for k in ADAPTERS}
    moved = {k for k in ADAPTERS if before[k] != after[k]}
    assert moved == {k for k in ADAPTERS if before[k] == gone}
    expected = len(ADAPTERS) / n
    assert abs(len(moved) - expected) < 0.15 * expected


@pytest.mark.parametrize("n", [3, 8])
def test_homes_are_balanced(n: int) -> None:
    counts = collections.Counter(home_endpoints(k, pods(n), 1)[0] for k in ADAPTERS)
    even = len(ADAPTERS) / n
    assert set(counts) == set(pods(n))
    assert all(abs(c - even) < 0.2 * even for c in counts.values()), counts


def test_replication_gives_distinct_homes_and_extends_the_primary() -> None:
    eps = pods(6)
    for key in ADAPTERS[:300]:
        homes = home_endpoints(key, eps, 3)
        assert len(homes) == len(set(homes)) == 3
        assert homes[0] == home_endpoints(key, eps, 1)[0]
    # Replication beyond the pool size is capped; zero still yields one home.
    assert sorted(home_endpoints("k", eps, 64)) == sorted(eps)
    assert len(home_endpoints("k", eps, 0)) == 1


def test_idle_pool_uses_primary_home_and_lists_every_endpoint() -> None:
    eps = pods(5)
    for key in ADAPTERS[:100]:
        cands = choose_endpoint(key, eps, 2, {}, 1.25)
        assert cands[0] == home_endpoints(key, eps, 1)[0]
        assert cands[:2] == home_endpoints(key, eps, 2)
        assert sorted(cands) == sorted(eps)


def test_least_outstanding_home_wins() -> None:
    eps = pods(5)
    key = "lora-busy"
    h1, h2 = home_endpoints(key, eps, 2)
    cands = choose_endpoint(key, eps, 2, {h1: 1}, 1.25)
    assert cands[:2] == [h2, h1]


def test_spill_when_all_homes_over_bound() -> None:
    eps = pods(4)
    key = "lora-hot"
    home = home_endpoints(key, eps, 1)[0]
    others = [e for e in eps if e != home]
    # One outstanding request on an otherwise idle pool does not spill (the +1).
    assert choose_endpoint(key, eps, 1, {home: 1}, 1.25)[0] == home
    # 3 outstanding: mean 0.75, limit 1.25*0.75+1 = 1.94 -> over: spill to an idle pod.
    load = {home: 3, others[0]: 0, others[1]: 1, others[2]: 0}
    assert load_limit(load, eps, 1.25) == pytest.approx(1.25 * 1.0 + 1)
    cands = choose_endpoint(key, eps, 1, load, 1.25)
    assert cands[0] in (others[0], others[2]) and load[cands[0]] == 0
    assert cands[1] == home  # the home is the first fallback
    assert sorted(cands) == sorted(eps)
    # Evenly loaded pool: nobody is over the bound, the home keeps the work.
    assert choose_endpoint(key, eps, 1, dict.fromkeys(eps, 5), 1.25)[0] == home


def test_spill_goes_to_least_loaded_non_home() -> None:
    eps = pods(6)
    key = "lora-x"
    homes = home_endpoints(key, eps, 2)
    others = [e for e in eps if e not in homes]
    load = {homes[0]: 10, homes[1]: 9, others[0]: 2, others[1]: 1, others[2]: 3, others[3]: 1}
    cands = choose_endpoint(key, eps, 2, load, 1.25)
    ties = sorted([others[1], others[3]], key=rank_endpoints(key, eps).index)
    assert cands[0] == ties[0]
    assert cands[1:3] == [homes[1], homes[0]]


def test_replication_covering_the_pool_never_spills() -> None:
    eps = pods(3)
    cands = choose_endpoint("k", eps, 3, {eps[0]: 9, eps[1]: 7, eps[2]: 8}, 1.0)
    assert cands == [eps[1], eps[2], eps[0]]


def test_no_endpoints() -> None:
    assert choose_endpoint("k", [], 1, {}, 1.25) == []
    assert home_endpoints("k", [], 2) == []
