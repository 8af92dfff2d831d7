"""Posting the Events of logic/events.py (I/O): best effort, one per distinct failure."""

from __future__ import annotations

import logging
import time
from typing import Any

from loraplex_operator.clients.kube import Kube, KubeError
from loraplex_operator.logic.events import event_manifest, failure_event

log = logging.getLogger(__name__)


async def post_failure_event(
    kube: Kube, body: dict[str, Any], kind: str, old_status: dict[str, Any] | None, new_status: dict[str, Any]
) -> bool:
    """Post a Warning Event if `new_status` degrades `body`; True when one was created."""
    event = failure_event(old_status, new_status)
    if event is None:
        return False
    manifest = event_manifest({**body, "kind": body.get("kind") or kind}, event, time.time())
    try:
        await kube.run(kube.create, manifest)
    except KubeError as e:
        if e.status == 409:
            return False  # the same failure was already reported: one Event per distinct failure
        level = logging.DEBUG if e.status in (403, 404) and "being terminated" in e.message else logging.WARNING
        log.log(level, "cannot post event %s: %s", manifest["metadata"]["name"], e)
        return False
    return True
