"""Kubernetes Events for pools and adapters that fail or degrade. Pure.

An Event is due when an object's `Degraded` condition turns True, or stays True
with another reason or message (the status write that records it is the
trigger, so an unchanged failure posts nothing). Its name is derived from the
object, the reason and the message: the same failure is one Event, however
often it is observed (the writer skips a name that already exists).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from loraplex_operator import constants as c
from loraplex_operator.logic.conditions import find, rfc3339


@dataclass(frozen=True)
class EventSpec:
    reason: str
    message: str
    type: str = "Warning"


def failure_event(old_status: dict[str, Any] | None, new_status: dict[str, Any]) -> EventSpec | None:
    """The Event a status change calls for, or None."""
    new = find(new_status.get("conditions"), "Degraded") or {}
    if new.get("status") != "True":
        return None
    old = find((old_status or {}).get("conditions"), "Degraded") or {}
    if old.get("status") == "True" and (old.get("reason"), old.get("message")) == (
        new.get("reason"),
        new.get("message"),
    ):
        return None
    return EventSpec(str(new.get("reason") or "Degraded"), str(new.get("message") or ""))


def event_name(object_name: str, event: EventSpec) -> str:
    digest = hashlib.sha256(f"{event.type}\0{event.reason}\0{event.message}".encode()).hexdigest()[:16]
    return f"{object_name}.{digest}"


def event_manifest(body: dict[str, Any], event: EventSpec, now: float) -> dict[str, Any]:
    """A core/v1 Event about `body` (a pool or an adapter), named by `event_name`."""
    meta = body["metadata"]
    stamp = rfc3339(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(meta["name"], event), "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", c.API_VERSION),
            "kind": body.get("kind", ""),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": event.reason,
        "message": event.message[:1024],
        "type": event.type,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": c.MANAGED_BY},
        "reportingComponent": c.MANAGED_BY,
        "reportingInstance": c.MANAGED_BY,
    }
