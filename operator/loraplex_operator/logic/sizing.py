"""How many pods a pool needs, and how many homes an adapter gets. Pure.

replicas = ceil(busy servers / target utilisation), where busy servers is
Little's law (arrival rate x mean service time) or the requests in flight
right now, whichever is larger (in flight catches a burst, and requests held
by the activator for a pool at zero, before any completes).

Stabilisation follows the HorizontalPodAutoscaler: going up takes the lowest
recommendation of the scale-up window (0 s by default: at once); going down
takes the highest of the scale-down window, and only once the history covers
the whole window (after an operator restart, scale-down waits a window).
A pool with minReplicas 0 keeps at least one pod until it has seen no
request for idleToZeroSeconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Sample = tuple[float, int]  # (time, raw recommendation)


@dataclass(frozen=True)
class ScalingPolicy:
    min_replicas: int
    max_replicas: int
    target_utilization: float = 0.7
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    idle_to_zero_s: float = 900.0


@dataclass(frozen=True)
class Load:
    request_rate: float  # requests per second arriving for the pool
    mean_service_s: float  # worker busy time per request
    in_flight: int = 0  # requests being served or waiting right now


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    history: tuple[Sample, ...]


def raw_replicas(load: Load, target_utilization: float) -> int:
    """Pods needed for this load at the target utilisation, unclamped."""
    busy = max(load.request_rate * load.mean_service_s, float(load.in_flight))
    if busy <= 0:
        return 0
    # Guard against float noise turning 1.4/0.7 = 2.0000000000000004 into 3.
    return math.ceil(round(busy / max(target_utilization, 1e-6), 9))


def clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, n))


def decide(
    policy: ScalingPolicy,
    current: int,
    load: Load,
    now: float,
    history: tuple[Sample, ...],
    last_request_time: float | None,
) -> Decision:
    """The next replica count for a pool, and the history to pass next time."""
    raw = raw_replicas(load, policy.target_utilization)
    hist = _prune(history, now - max(policy.scale_up_window_s, policy.scale_down_window_s)) + ((now, raw),)

    # Floor: minReplicas, but a pool allowed to reach zero stays at one until idle.
    floor = policy.min_replicas
    idle = last_request_time is None or now - last_request_time >= policy.idle_to_zero_s
    if floor == 0 and (not idle or load.in_flight > 0 or load.request_rate > 0):
        floor = 1

    if raw > current or (current == 0 and floor > 0):
        window = [r for t, r in hist if t >= now - policy.scale_up_window_s]
        target = max(current, min(window))
        return Decision(clamp(max(target, floor), floor, policy.max_replicas), "ScaleUp", hist)

    if raw < current:
        if not history or history[0][0] > now - policy.scale_down_window_s:
            return Decision(clamp(current, floor, policy.max_replicas), "ScaleDownStabilizing", hist)
        window = [r for t, r in hist if t >= now - policy.scale_down_window_s]
        target = min(current, max(window))
        reason = "ScaleToZero" if clamp(target, floor, policy.max_replicas) == 0 else "ScaleDown"
        return Decision(clamp(target, floor, policy.max_replicas), reason, hist)

    return Decision(clamp(current, floor, policy.max_replicas), "Steady", hist)


def adapter_replication(need: int, min_replicas: int, max_replicas: int) -> int:
    """Home pods for one adapter: its own demand, at least its warm minimum, at most its maximum.

    Deliberately not capped by the pool's ready pods: the sidecars already
    use every endpoint when homes outnumber them, and a cap would rewrite
    every adapter's entry each time the pool scales.
    """
    return clamp(max(need, min_replicas), 1, max(1, min(max_replicas, 64)))


def stabilized_need(
    prev: int | None, last_high: float | None, raw: int, now: float, down_window_s: float
) -> tuple[int, float]:
    """An adapter's demand with the pool's asymmetry: up at once, down after a quiet window.

    Returns (need, last_high) where last_high is when demand last reached `need`.
    """
    if prev is None or last_high is None or raw >= prev:
        return raw, now
    if now - last_high >= down_window_s:
        return raw, now
    return prev, last_high


def _prune(history: tuple[Sample, ...], cutoff: float) -> tuple[Sample, ...]:
    """Samples at or after `cutoff`, plus the newest one before it.

    That one older sample is what proves the history covers a whole window
    (without it, samples every 15 s never reach exactly 300 s back).
    """
    recent = tuple(s for s in history if s[0] >= cutoff)
    older = [s for s in history if s[0] < cutoff]
    return ((older[-1],) if older else ()) + recent
