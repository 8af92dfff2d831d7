"""Which status changes are Events, and their deterministic names (logic/events.py)."""

from __future__ import annotations

from loraplex_operator.logic.events import EventSpec, event_manifest, event_name, failure_event


def status(degraded: bool, reason: str = "NotALora", message: str = "m") -> dict:
    return {"conditions": [{"type": "Degraded", "status": str(degraded), "reason": reason, "message": message}]}


def test_an_event_when_degraded_turns_true_or_changes_reason() -> None:
    assert failure_event(None, status(True)) == EventSpec("NotALora", "m")
    assert failure_event(status(False, "AsExpected", ""), status(True)) == EventSpec("NotALora", "m")
    assert failure_event(status(True), status(True)) is None  # unchanged: nothing new to say
    assert failure_event(status(True), status(True, "InvalidSource", "x")) == EventSpec("InvalidSource", "x")
    assert failure_event(status(True), status(False, "AsExpected", "")) is None
    assert failure_event(None, {}) is None


def test_same_failure_same_name() -> None:
    a = event_name("pixel", EventSpec("NotALora", "m"))
    assert a == event_name("pixel", EventSpec("NotALora", "m"))
    assert a != event_name("pixel", EventSpec("NotALora", "other"))
    assert a.startswith("pixel.")
    body = {
        "apiVersion": "loraplex.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {"name": "pixel", "namespace": "ns", "uid": "u"},
    }
    ev = event_manifest(body, EventSpec("NotALora", "m"), 0.0)
    assert ev["metadata"] == {"name": a, "namespace": "ns"}
    assert ev["involvedObject"]["uid"] == "u" and ev["involvedObject"]["kind"] == "LoraAdapter"
    assert ev["type"] == "Warning" and ev["count"] == 1
