"""A BaseModelPool's status, computed from what was observed. Pure.

Inputs: the pool's generation and desired replicas, its Deployment (as the
API returns it, or None), the pods summary, an apply error if the last apply
failed, and the autoscaler's latest aggregate. Output: the status fields the
operator owns, ready for a merge patch on the status subresource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraplex_operator.logic.conditions import Condition, merge_conditions
from loraplex_operator.logic.podstate import PodSummary


@dataclass(frozen=True)
class PoolObservation:
    generation: int
    desired: int
    selector: str
    deployment: dict[str, Any] | None
    pods: PodSummary
    apply_error: str | None = None
    request_rate: float | None = None
    mean_service_seconds: float | None = None


def _deployment_condition(dep: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for cond in ((dep or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def pool_conditions(obs: PoolObservation) -> list[Condition]:
    dep = obs.deployment
    dstatus = (dep or {}).get("status") or {}
    ready, desired, pods = obs.pods.ready_count, obs.desired, obs.pods

    # Degraded: something that needs a human (or more hardware), most specific first.
    replica_failure = _deployment_condition(dep, "ReplicaFailure")
    dep_progress = _deployment_condition(dep, "Progressing")
    if obs.apply_error:
        degraded = Condition("Degraded", True, "ApplyFailed", obs.apply_error)
    elif pods.unschedulable:
        degraded = Condition(
            "Degraded",
            True,
            "Unschedulable",
            f"{pods.unschedulable} pod(s) cannot be scheduled: {pods.unschedulable_message}".strip(),
        )
    elif pods.failing:
        degraded = Condition(
            "Degraded", True, pods.failing_reason, f"{pods.failing} pod(s) failing; {pods.failing_message}".strip()
        )
    elif replica_failure and replica_failure.get("status") == "True":
        degraded = Condition(
            "Degraded", True, replica_failure.get("reason") or "ReplicaFailure", replica_failure.get("message", "")
        )
    elif dep_progress and dep_progress.get("status") == "False":
        degraded = Condition(
            "Degraded", True, dep_progress.get("reason") or "ProgressDeadlineExceeded", dep_progress.get("message", "")
        )
    else:
        degraded = Condition("Degraded", False, "AsExpected", "")

    # Progressing: the Deployment has not caught up with what we asked yet.
    dep_gen = (dep or {}).get("metadata", {}).get("generation")
    updated = dstatus.get("updatedReplicas", 0) or 0
    if dep is None or dstatus.get("observedGeneration") != dep_gen:
        progressing = Condition("Progressing", True, "Reconciling", "waiting for the Deployment to observe the spec")
    elif updated < desired:
        progressing = Condition("Progressing", True, "RollingOut", f"{updated}/{desired} pods updated")
    elif ready < desired:
        progressing = Condition("Progressing", True, "ScalingUp", f"{ready}/{desired} pods ready")
    elif pods.total > desired:
        progressing = Condition("Progressing", True, "ScalingDown", f"{pods.total} pods, {desired} desired")
    else:
        progressing = Condition("Progressing", False, "Stable", f"{ready}/{desired} pods ready")

    if desired == 0:
        ready_c = Condition("Ready", True, "ScaledToZero", "no replicas requested")
    elif ready >= desired:
        ready_c = Condition("Ready", True, "AllReplicasReady", f"{ready}/{desired} pods ready")
    else:
        reason = "Unschedulable" if pods.unschedulable else "ReplicasNotReady"
        ready_c = Condition("Ready", False, reason, f"{ready}/{desired} pods ready")
    return [ready_c, progressing, degraded]


def pool_status(obs: PoolObservation, old_status: dict[str, Any] | None, now: float) -> dict[str, Any]:
    old_status = old_status or {}
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "replicas": obs.pods.total,
        "readyReplicas": obs.pods.ready_count,
        "desiredReplicas": obs.desired,
        "selector": obs.selector,
        "conditions": merge_conditions(old_status.get("conditions"), pool_conditions(obs), now, obs.generation),
    }
    # Keep the last known figures rather than flapping to 0 when stats are unavailable.
    if obs.request_rate is not None:
        status["requestRate"] = _fmt_rate(obs.request_rate)
    if obs.mean_service_seconds is not None:
        status["meanServiceSeconds"] = _fmt_rate(obs.mean_service_seconds)
    return status


def _fmt_rate(x: float) -> float:
    # Fixed precision: tiny float jitter must not turn into a status write every poll.
    return round(x, 3)
