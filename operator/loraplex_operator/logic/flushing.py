"""When the routing-table writer may flush next. Pure.

Changes are coalesced: a flush waits until marks pause for `debounce_s`, but
never longer than `max_delay_s` after the first unflushed mark. Flushes are
also spaced: at least `min_interval_s` apart, and at least `cost_factor`
times the last flush's own duration, so that a namespace whose rebuild is
expensive (tens of thousands of adapters, during a burst of creations)
spends at most 1/(1 + cost_factor) of the operator's time rebuilding and
the rest handling the events that caused it.
"""

from __future__ import annotations


def flush_due(
    now: float,
    first_mark: float | None,
    last_mark: float,
    last_flush: float,
    last_cost_s: float,
    debounce_s: float,
    max_delay_s: float,
    min_interval_s: float,
    cost_factor: float = 2.0,
) -> float:
    """The earliest time (same clock as the arguments) the next flush may start."""
    first = first_mark if first_mark is not None else now
    coalesced = min(last_mark + debounce_s, first + max_delay_s)
    spaced = last_flush + max(min_interval_s, cost_factor * max(0.0, last_cost_s))
    return max(coalesced, spaced)
