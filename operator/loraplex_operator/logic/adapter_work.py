"""What an adapter watch event asks of the operator. Pure.

The operator reconciles a LoraAdapter when its status has not observed its
spec's generation (created, edited, or its status cleared), and keeps retrying
one whose status says it is waiting (Pending, Failed, or Ready with an alias
another holds). Everything else is a no-op: an operator restart that sees every
adapter again writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

WAITING_PHASES = frozenset({"Pending", "Failed"})


def needs_reconcile(body: Mapping[str, Any]) -> bool:
    """The spec's generation is not what the status was computed from (and the adapter is not being deleted)."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = body.get("status") or {}
    return status.get("observedGeneration") != meta.get("generation")


def is_waiting(body: Mapping[str, Any]) -> bool:
    """Its last reconcile left it short of done: retried with backoff until it is."""
    status = body.get("status") or {}
    if status.get("phase") in WAITING_PHASES:
        return True
    return any(
        cnd.get("type") == "AliasConflict" and cnd.get("status") == "True" for cnd in status.get("conditions") or []
    )
