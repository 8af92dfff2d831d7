"""The patch that makes kopf run an adapter's handler again now. Pure.

Changing an annotation is not enough on its own: while a handler is retrying,
kopf keeps its progress (retry count, `delayed` until when) in annotations under
our kopf prefix and runs nothing before that time, whatever the new event. The
nudge therefore also clears that progress (not the diff base): kopf then starts
the handler afresh, at once, with its backoff reset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loraplex_operator import constants as c

DIFFBASE_KEY = "last-handled-configuration"


def nudge_patch(annotations: Mapping[str, str] | None, stamp: str) -> dict[str, Any]:
    """A merge patch: a fresh nudge stamp, and kopf's handler progress removed."""
    prefix = f"{c.KOPF_ANNOTATION_PREFIX}/"
    patch: dict[str, str | None] = {c.ANNOTATION_NUDGE: stamp}
    for key in annotations or {}:
        if key.startswith(prefix) and key != prefix + DIFFBASE_KEY:
            patch[key] = None
    return {"metadata": {"annotations": patch}}
