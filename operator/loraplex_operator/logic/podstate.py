"""Reading a pool's pods: who is ready (routing endpoints), who cannot run and why.

Pure functions over pod dicts as the API returns them (camelCase JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Container waiting reasons that will not fix themselves: the pool is Degraded.
_FAILING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        # pullPolicy Never and the image is not on the node (the kubelet's own reason).
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class ReadyPod:
    name: str
    ip: str


@dataclass(frozen=True)
class PodSummary:
    total: int = 0  # pods not being deleted
    ready: tuple[ReadyPod, ...] = ()  # sorted by name
    unschedulable: int = 0
    unschedulable_message: str = ""
    failing: int = 0
    failing_reason: str = ""
    failing_message: str = ""
    names: tuple[str, ...] = field(default=())

    @property
    def ready_count(self) -> int:
        return len(self.ready)


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def is_pod_ready(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False  # draining: must leave the routing table first
    status = pod.get("status") or {}
    cond = _condition(pod, "Ready")
    return bool(cond and cond.get("status") == "True" and status.get("podIP"))


# Enough of a crash's last log line to name the error; the full logs stay with the pod.
_LAST_LINE_CHARS = 300


def last_exit(container_status: dict[str, Any]) -> str:
    """'; last exit 1 (Error): <last line>' from the container's previous run, or ''.

    The message is the container's termination message, or with FallbackToLogsOnError
    the tail of its log: its last non-empty line is what a crash usually ends on."""
    term = ((container_status.get("lastState") or {}).get("terminated")) or {}
    if not term:
        return ""
    out = f"; last exit {term.get('exitCode', '?')} ({term.get('reason') or 'unknown'})"
    lines = [ln.strip() for ln in str(term.get("message") or "").splitlines() if ln.strip()]
    if lines:
        line = lines[-1]
        out += ": " + (line if len(line) <= _LAST_LINE_CHARS else line[: _LAST_LINE_CHARS - 1] + "…")
    return out


def summarize_pods(pods: list[dict[str, Any]]) -> PodSummary:
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    live.sort(key=lambda p: p["metadata"]["name"])
    ready = tuple(ReadyPod(p["metadata"]["name"], p["status"]["podIP"]) for p in live if is_pod_ready(p))
    unsched = 0
    unsched_msg = ""
    failing = 0
    failing_reason = failing_msg = ""
    for pod in live:
        sched = _condition(pod, "PodScheduled")
        if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
            unsched += 1
            unsched_msg = unsched_msg or sched.get("message", "")
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _FAILING_REASONS:
                failing += 1
                if not failing_reason:
                    failing_reason = waiting["reason"]
                    failing_msg = f"container {cs.get('name')}: {waiting.get('message', '')}".strip()
                    failing_msg += last_exit(cs)
                break
    return PodSummary(
        total=len(live),
        ready=ready,
        unschedulable=unsched,
        unschedulable_message=unsched_msg,
        failing=failing,
        failing_reason=failing_reason,
        failing_message=failing_msg,
        names=tuple(p["metadata"]["name"] for p in live),
    )
