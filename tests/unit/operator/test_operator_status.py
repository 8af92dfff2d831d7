"""Pool and adapter status and conditions (pure)."""

from __future__ import annotations

from typing import Any

from loraplex_operator.controllers.adapter_controller import Outcome, adapter_status
from loraplex_operator.logic.conditions import Condition, find, merge_conditions, status_changed
from loraplex_operator.logic.podstate import summarize_pods
from loraplex_operator.logic.poolstatus import PoolObservation, pool_status


def pod(
    name: str,
    ready: bool = True,
    ip: str | None = "10.0.0.1",
    unschedulable: str | None = None,
    waiting: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable})
    status: dict[str, Any] = {"conditions": conds}
    if ip:
        status["podIP"] = ip
    if waiting:
        status["containerStatuses"] = [{"name": "worker", "state": {"waiting": {"reason": waiting, "message": "boom"}}}]
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"metadata": meta, "status": status}


def deployment(generation: int = 1, observed: int = 1, updated: int = 1, conditions: list | None = None) -> dict:
    return {
        "metadata": {"generation": generation},
        "status": {"observedGeneration": observed, "updatedReplicas": updated, "conditions": conditions or []},
    }


def obs(pods: list[dict], desired: int = 1, dep: dict | None = None, **kw: Any) -> PoolObservation:
    return PoolObservation(
        generation=3, desired=desired, selector="a=b", deployment=dep or deployment(), pods=summarize_pods(pods), **kw
    )


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_pod_summary() -> None:
    s = summarize_pods(
        [pod("b"), pod("a", ip="10.0.0.2"), pod("c", ready=False), pod("d", ip=None), pod("e", deleting=True)]
    )
    assert [p.name for p in s.ready] == ["a", "b"]
    assert s.total == 4  # the deleting pod is not counted


def test_ready_pool() -> None:
    st = pool_status(obs([pod("a")]), None, now=0.0)
    assert conds(st) == {
        "Ready": ("True", "AllReplicasReady"),
        "Progressing": ("False", "Stable"),
        "Degraded": ("False", "AsExpected"),
    }
    assert st["observedGeneration"] == 3 and st["readyReplicas"] == 1 and st["selector"] == "a=b"
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] for c in st["conditions"])


def test_unschedulable_pool_is_degraded_with_the_scheduler_message() -> None:
    msg = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    st = pool_status(obs([pod("a", ready=False, ip=None, unschedulable=msg)], dep=deployment(updated=1)), None, 0.0)
    c = conds(st)
    assert c["Degraded"] == ("True", "Unschedulable")
    assert c["Ready"] == ("False", "Unschedulable")
    assert msg in find(st["conditions"], "Degraded")["message"]


def test_failing_containers_and_deployment_failures() -> None:
    st = pool_status(obs([pod("a", ready=False, waiting="ImagePullBackOff")]), None, 0.0)
    assert conds(st)["Degraded"] == ("True", "ImagePullBackOff")
    # What the real node's kubelet reports for a missing image under pullPolicy Never.
    st = pool_status(obs([pod("a", ready=False, waiting="ErrImageNeverPull")]), None, 0.0)
    assert conds(st)["Degraded"] == ("True", "ErrImageNeverPull")
    assert "boom" in next(c for c in st["conditions"] if c["type"] == "Degraded")["message"]
    dep = deployment(
        conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}
        ]
    )
    st = pool_status(obs([pod("a", ready=False)], dep=dep), None, 0.0)
    assert conds(st)["Degraded"] == ("True", "ProgressDeadlineExceeded")
    st = pool_status(obs([pod("a")], apply_error="cannot apply Deployment"), None, 0.0)
    assert conds(st)["Degraded"] == ("True", "ApplyFailed")


def test_crash_loop_quotes_the_last_exit_and_log_line() -> None:
    crashed = pod("a", ready=False, waiting="CrashLoopBackOff")
    log = "Traceback (most recent call last):\n  ...\nOSError: no model at /models/nope\n\n"
    crashed["status"]["containerStatuses"][0]["lastState"] = {
        "terminated": {"exitCode": 1, "reason": "Error", "message": log}
    }
    st = pool_status(obs([crashed]), None, 0.0)
    assert conds(st)["Degraded"] == ("True", "CrashLoopBackOff")
    msg = find(st["conditions"], "Degraded")["message"]
    assert "last exit 1 (Error): OSError: no model at /models/nope" in msg and "Traceback" not in msg
    # A long line is cut; no previous run, nothing added.
    crashed["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"] = "x" * 5000
    assert len(find(pool_status(obs([crashed]), None, 0.0)["conditions"], "Degraded")["message"]) < 500
    assert (
        "last exit"
        not in find(
            pool_status(obs([pod("a", ready=False, waiting="CrashLoopBackOff")]), None, 0.0)["conditions"], "Degraded"
        )["message"]
    )


def test_progressing_reasons() -> None:
    assert conds(pool_status(obs([], dep=deployment(generation=2, observed=1)), None, 0))["Progressing"] == (
        "True",
        "Reconciling",
    )
    assert conds(pool_status(obs([pod("a")], desired=2, dep=deployment(updated=1)), None, 0))["Progressing"] == (
        "True",
        "RollingOut",
    )
    assert conds(pool_status(obs([pod("a"), pod("b", ready=False)], desired=2, dep=deployment(updated=2)), None, 0))[
        "Progressing"
    ] == ("True", "ScalingUp")
    assert conds(pool_status(obs([pod("a"), pod("b")], desired=1), None, 0))["Progressing"] == ("True", "ScalingDown")
    assert conds(pool_status(obs([], desired=0, dep=deployment(updated=0)), None, 0))["Ready"] == (
        "True",
        "ScaledToZero",
    )


def test_transition_time_kept_while_status_unchanged_so_no_rewrite() -> None:
    first = pool_status(obs([pod("a")]), None, now=1000.0)
    again = pool_status(obs([pod("a")]), first, now=2000.0)
    assert again == first
    assert not status_changed(first, again)
    flipped = pool_status(obs([pod("a", ready=False)]), first, now=3000.0)
    ready = find(flipped["conditions"], "Ready")
    assert ready["status"] == "False" and ready["lastTransitionTime"] == "1970-01-01T00:50:00Z"
    degraded = find(flipped["conditions"], "Degraded")
    assert degraded["lastTransitionTime"] == find(first["conditions"], "Degraded")["lastTransitionTime"]
    assert status_changed(first, flipped)


def test_rates_only_when_known() -> None:
    st = pool_status(obs([pod("a")], request_rate=0.123456, mean_service_seconds=2.0), None, 0)
    assert st["requestRate"] == 0.123 and st["meanServiceSeconds"] == 2.0
    assert "requestRate" not in pool_status(obs([pod("a")]), None, 0)


def test_merge_conditions_orders_types() -> None:
    out = merge_conditions([], [Condition("Degraded", False, "x"), Condition("Ready", True, "y")], 0, None)
    assert [c["type"] for c in out] == ["Ready", "Degraded"]
    assert "observedGeneration" not in out[0]


def test_adapter_status_phases() -> None:
    ready = adapter_status(Outcome("Ready", "Routed", "", "sdxl", {"resolvedRevision": "abc"}), None, 4, 0)
    assert ready["phase"] == "Ready" and ready["pool"] == "sdxl" and ready["resolvedRevision"] == "abc"
    assert conds(ready) == {
        "Ready": ("True", "Routed"),
        "Progressing": ("False", "Resolved"),
        "Degraded": ("False", "AsExpected"),
    }
    pending = adapter_status(Outcome("Pending", "HubUnreachable", "cannot reach the hub"), None, 4, 0)
    assert conds(pending) == {
        "Ready": ("False", "HubUnreachable"),
        "Progressing": ("True", "HubUnreachable"),
        "Degraded": ("False", "AsExpected"),
    }
    # Lost an alias: still Ready (routed by its own name), with a condition of its own naming the alias.
    conflict = adapter_status(Outcome("Ready", "Routed", "", "sdxl", alias_conflict="alias 'px' is taken"), ready, 4, 1)
    assert conds(conflict)["Ready"] == ("True", "Routed") and conds(conflict)["AliasConflict"] == (
        "True",
        "AliasConflict",
    )
    assert find(conflict["conditions"], "AliasConflict")["message"] == "alias 'px' is taken"
    assert "AliasConflict" not in conds(adapter_status(Outcome("Ready", "Routed", "", "sdxl"), conflict, 4, 2))
    failed = adapter_status(Outcome("Failed", "NotALora", "no lora tag"), None, 4, 0)
    assert conds(failed)["Degraded"] == ("True", "NotALora")
    assert find(failed["conditions"], "Ready")["message"] == "no lora tag"
