"""Pool and adapter sizing (pure)."""

from __future__ import annotations

from loraplex_operator.logic.sizing import (
    Decision,
    Load,
    ScalingPolicy,
    adapter_replication,
    decide,
    raw_replicas,
    stabilized_need,
)


def test_raw_replicas_is_littles_law_over_target() -> None:
    # 0.5 req/s x 10 s = 5 busy workers; at 70% utilisation -> ceil(7.14) = 8
    assert raw_replicas(Load(0.5, 10.0), 0.7) == 8
    assert raw_replicas(Load(0.14, 10.0), 0.7) == 2  # 1.4 / 0.7 = 2 exactly, no float creep to 3
    assert raw_replicas(Load(0.0, 10.0), 0.7) == 0
    assert raw_replicas(Load(0.0, 0.0, in_flight=3), 1.0) == 3  # a burst held by the activator counts


POLICY = ScalingPolicy(
    min_replicas=1,
    max_replicas=10,
    target_utilization=0.5,
    scale_up_window_s=0,
    scale_down_window_s=60,
    idle_to_zero_s=300,
)


def _run(policy: ScalingPolicy, steps: list[tuple[float, Load, float | None]], current: int) -> list[Decision]:
    out, history = [], ()
    for now, load, last in steps:
        d = decide(policy, current, load, now, history, last)
        out.append(d)
        history, current = d.history, d.replicas
    return out


def test_scale_up_is_immediate_and_clamped() -> None:
    d = decide(POLICY, 1, Load(1.0, 2.0), now=100.0, history=(), last_request_time=100.0)
    assert (d.replicas, d.reason) == (4, "ScaleUp")  # 2 busy / 0.5
    d = decide(POLICY, 1, Load(100.0, 2.0), now=100.0, history=(), last_request_time=100.0)
    assert d.replicas == 10  # max


def test_scale_up_window_takes_the_lowest_recent_recommendation() -> None:
    policy = ScalingPolicy(1, 10, 0.5, scale_up_window_s=30, scale_down_window_s=60)
    hist = ((90.0, 2),)
    d = decide(policy, 1, Load(2.0, 2.0), now=100.0, history=hist, last_request_time=100.0)
    assert d.replicas == 2  # a short spike (8) must persist for the window before it counts


def test_scale_down_waits_for_a_full_window_then_takes_the_highest() -> None:
    high, low = Load(1.0, 2.0), Load(0.25, 2.0)  # 4 and 1 replicas
    steps = [(0.0, high, 0.0)] + [(float(t), low, float(t)) for t in range(15, 121, 15)]
    decisions = _run(POLICY, steps, current=1)
    replicas = [d.replicas for d in decisions]
    assert replicas[0] == 4
    # no scale-down before 60 s of history, and none while the window still holds a 4
    assert all(r == 4 for r in replicas[:5])
    assert replicas[5:] == [1] * (len(replicas) - 5)  # t=75: the 4 left the window
    assert decisions[5].reason == "ScaleDown"


def test_restart_with_empty_history_does_not_scale_down_at_once() -> None:
    d = decide(POLICY, 5, Load(0.0, 2.0), now=1000.0, history=(), last_request_time=999.0)
    assert (d.replicas, d.reason) == (5, "ScaleDownStabilizing")


def test_to_zero_only_after_idle_when_min_is_zero() -> None:
    policy = ScalingPolicy(0, 5, 0.5, scale_down_window_s=60, idle_to_zero_s=300)
    idle = Load(0.0, 2.0)
    # recent traffic: keep one pod even though the load is zero
    steps = [(float(t), idle, 0.0) for t in range(0, 241, 30)]
    assert _run(policy, steps, current=1)[-1].replicas == 1
    # idle past idleToZeroSeconds and the down window: zero
    steps = [(float(t), idle, 0.0) for t in range(0, 481, 30)]
    decisions = _run(policy, steps, current=1)
    first_zero = next(i for i, d in enumerate(decisions) if d.replicas == 0)
    assert steps[first_zero][0] >= 300 and decisions[first_zero].reason == "ScaleToZero"
    assert decisions[-1].replicas == 0
    # min 1 never reaches zero
    assert _run(ScalingPolicy(1, 5, 0.5, 0, 60, 300), steps, current=1)[-1].replicas == 1


def test_from_zero_on_first_request() -> None:
    policy = ScalingPolicy(0, 5, 0.5, scale_down_window_s=60, idle_to_zero_s=300)
    d = decide(policy, 0, Load(0.0, 0.0, in_flight=1), now=10.0, history=(), last_request_time=10.0)
    assert (d.replicas, d.reason) == (2, "ScaleUp")  # one request in flight / 0.5 target
    d = decide(policy, 0, Load(0.01, 0.0), now=10.0, history=(), last_request_time=10.0)
    assert d.replicas == 1


def test_history_is_bounded() -> None:
    hist: tuple = ()
    for t in range(0, 10_000, 15):
        hist = decide(POLICY, 2, Load(0.5, 2.0), float(t), hist, float(t)).history
    assert len(hist) <= 60 / 15 + 2


def test_adapter_replication() -> None:
    assert adapter_replication(0, 1, 8) == 1
    assert adapter_replication(0, 2, 8) == 2  # warm minimum
    assert adapter_replication(5, 1, 8) == 5  # own demand
    assert adapter_replication(50, 1, 8) == 8  # its maximum
    assert adapter_replication(500, 1, 100) == 64  # the routing table's bound


def test_stabilized_need_goes_up_at_once_and_down_after_the_window() -> None:
    need, since = stabilized_need(None, None, 3, 0.0, 60)
    assert (need, since) == (3, 0.0)
    need, since = stabilized_need(need, since, 1, 30.0, 60)
    assert need == 3
    need, since = stabilized_need(need, since, 1, 61.0, 60)
    assert need == 1
    need, since = stabilized_need(need, since, 4, 62.0, 60)
    assert need == 4
