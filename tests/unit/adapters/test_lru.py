import pytest

from inference_pod.adapters.lru import BudgetExceeded, BudgetLRU


def test_evicts_least_recently_used_first():
    lru: BudgetLRU[str] = BudgetLRU(3)
    for k in "abc":
        assert lru.put(k, k.upper(), 1) == []
    lru.get("a")  # a is now the most recent
    assert lru.put("d", "D", 1) == [("b", "B")]
    assert list(lru.keys()) == ["c", "a", "d"]
    assert lru.used == 3


def test_pinned_entries_are_never_evicted():
    lru: BudgetLRU[int] = BudgetLRU(2)
    lru.put("pinned", 1, 1, pinned=True)
    lru.put("x", 2, 1)
    assert lru.put("y", 3, 1) == [("x", 2)]
    with pytest.raises(BudgetExceeded):
        lru.put("big", 4, 2)  # only 1 can be freed: the rest is pinned
    assert "pinned" in lru and "y" in lru


def test_excluded_keys_survive_and_costs_are_tracked():
    lru: BudgetLRU[int] = BudgetLRU(10)
    lru.put("a", 1, 4)
    lru.put("b", 2, 4)
    evicted = lru.put("c", 3, 4, exclude=frozenset({"a"}))
    assert evicted == [("b", 2)]
    assert lru.used == 8
    with pytest.raises(BudgetExceeded):
        lru.put("huge", 0, 11)


def test_replacing_a_key_releases_its_old_cost():
    lru: BudgetLRU[int] = BudgetLRU(5)
    lru.put("a", 1, 4)
    lru.put("a", 2, 5)
    assert lru.used == 5 and lru.get("a") == 2
    assert lru.pop("a") == 2 and lru.used == 0
