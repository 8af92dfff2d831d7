"""The discrete-event queue of the fleet simulator. Pure, no I/O.

Events are ordered by time, then by the order they were scheduled (a
sequence number): two events at the same instant always run first-scheduled
first, so a run is a deterministic function of its inputs and seed.
"""

from __future__ import annotations

import heapq
from typing import Any


class EventQueue:
    """A min-heap of (time, seq, kind, payload)."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0

    def push(self, time: float, kind: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, payload))

    def pop(self) -> tuple[float, int, Any]:
        time, _, kind, payload = heapq.heappop(self._heap)
        return time, kind, payload

    def peek_time(self) -> float:
        return self._heap[0][0] if self._heap else float("inf")

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)
