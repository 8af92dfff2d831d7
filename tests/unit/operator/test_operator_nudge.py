"""The nudge patch (logic/nudge.py): a new stamp, kopf's retry progress cleared, its diff base kept."""

from __future__ import annotations

from loraplex_operator import constants as c
from loraplex_operator.logic.nudge import nudge_patch


def test_nudge_clears_kopf_progress_but_keeps_the_diff_base_and_user_annotations() -> None:
    annotations = {
        f"{c.KOPF_ANNOTATION_PREFIX}/adapter_changed": '{"retries": 2, "delayed": "2026-01-01T00:00:20"}',
        f"{c.KOPF_ANNOTATION_PREFIX}/touch-dummy": "x",
        f"{c.KOPF_ANNOTATION_PREFIX}/last-handled-configuration": "{}",
        "example.com/note": "mine",
        c.ANNOTATION_NUDGE: "old",
    }
    patch = nudge_patch(annotations, "pool@1.0")["metadata"]["annotations"]
    assert patch == {
        c.ANNOTATION_NUDGE: "pool@1.0",
        f"{c.KOPF_ANNOTATION_PREFIX}/adapter_changed": None,
        f"{c.KOPF_ANNOTATION_PREFIX}/touch-dummy": None,
    }


def test_nudge_without_annotations() -> None:
    assert nudge_patch(None, "s") == {"metadata": {"annotations": {c.ANNOTATION_NUDGE: "s"}}}
