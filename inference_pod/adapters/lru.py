"""A size-budgeted LRU map with pinned entries exempt from eviction.

The adapter tiers (GPU slots, host RAM, disk) all use it: each entry has a
cost (bytes or slots), the total stays within the budget by evicting the
least recently used unpinned entries, and evictions are returned so the
caller can release what they held.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


class BudgetExceeded(Exception):
    """The entry cannot fit even after evicting every unpinned entry."""


@dataclass
class _Entry(Generic[V]):
    value: V
    cost: int
    pinned: bool


class BudgetLRU(Generic[V]):
    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("budget must be >= 0")
        self.budget = budget
        self._items: OrderedDict[str, _Entry[V]] = OrderedDict()
        self.used = 0

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> Iterator[str]:
        return iter(self._items)

    def get(self, key: str, touch: bool = True) -> V | None:
        entry = self._items.get(key)
        if entry is None:
            return None
        if touch:
            self._items.move_to_end(key)
        return entry.value

    def is_pinned(self, key: str) -> bool:
        entry = self._items.get(key)
        return bool(entry and entry.pinned)

    def set_pinned(self, key: str, pinned: bool) -> None:
        if key in self._items:
            self._items[key].pinned = pinned

    def plan_evictions(self, cost: int, exclude: frozenset[str] = frozenset()) -> list[str]:
        """Keys that would be evicted to admit `cost` more; raise if impossible."""
        if cost > self.budget:
            raise BudgetExceeded(f"needs {cost}, budget is {self.budget}")
        free = self.budget - self.used
        victims: list[str] = []
        for key, entry in self._items.items():
            if free >= cost:
                break
            if entry.pinned or key in exclude:
                continue
            victims.append(key)
            free += entry.cost
        if free < cost:
            raise BudgetExceeded(f"needs {cost}, only {free} can be freed (the rest is pinned or in use)")
        return victims

    def put(
        self, key: str, value: V, cost: int, pinned: bool = False, exclude: frozenset[str] = frozenset()
    ) -> list[tuple[str, V]]:
        """Insert or replace; return the evicted (key, value) pairs, oldest first."""
        if key in self._items:
            self.pop(key)
        victims = self.plan_evictions(cost, exclude)
        evicted = [(k, self.pop(k)) for k in victims]
        self._items[key] = _Entry(value, cost, pinned)
        self.used += cost
        return evicted  # type: ignore[return-value]

    def pop(self, key: str) -> V | None:
        entry = self._items.pop(key, None)
        if entry is None:
            return None
        self.used -= entry.cost
        return entry.value

    def items(self) -> list[tuple[str, V]]:
        return [(k, e.value) for k, e in self._items.items()]
