"""Status conditions (Ready, Progressing, Degraded), Kubernetes-style.

Pure: callers pass `now`. A condition keeps its lastTransitionTime while its
status stays the same, so re-running a reconcile that observes nothing new
produces an identical status and therefore no write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    old: Iterable[dict[str, Any]] | None, new: Iterable[Condition], now: float, observed_generation: int | None
) -> list[dict[str, Any]]:
    """New condition dicts, in a fixed order, keeping transition times of unchanged statuses."""
    previous = {c.get("type"): c for c in (old or []) if isinstance(c, dict)}
    out = []
    for cond in sorted(
        new,
        key=lambda c: (CONDITION_TYPES.index(c.type) if c.type in CONDITION_TYPES else len(CONDITION_TYPES), c.type),
    ):
        status = "True" if cond.status else "False"
        prev = previous.get(cond.type)
        if prev is not None and prev.get("status") == status and prev.get("lastTransitionTime"):
            when = prev["lastTransitionTime"]
        else:
            when = rfc3339(now)
        d: dict[str, Any] = {
            "type": cond.type,
            "status": status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": when,
        }
        if observed_generation is not None:
            d["observedGeneration"] = observed_generation
        out.append(d)
    return out


def find(conditions: Iterable[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    for cond in conditions or []:
        if isinstance(cond, dict) and cond.get("type") == type_:
            return cond
    return None


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Would writing `new` change any field it sets? (Fields it omits are left alone by a merge patch.)"""
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())
