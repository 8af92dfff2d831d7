"""The sidecar's retry policy: one table, shared by the routed path and the hop path."""

from __future__ import annotations

import aiohttp
import pytest

from inference_pod.router.forwarding import RETRY_STATUSES, Verdict, classify


@pytest.mark.parametrize(
    ("outcome", "verdict"),
    [
        (200, Verdict.OK),
        (400, Verdict.OK),  # the request's own answer
        (404, Verdict.OK),
        (422, Verdict.OK),
        (429, Verdict.RETRY_STATUS),  # queue full: another pod may have room
        (500, Verdict.FAILED),  # deterministic: would repeat
        (502, Verdict.RETRY_STATUS),  # pod gone
        (503, Verdict.RETRY_STATUS),  # draining, not ready
        (504, Verdict.FAILED),  # the deadline is spent
        (aiohttp.ConnectionTimeoutError(), Verdict.RETRY_CONNECT),  # never took the request
        (aiohttp.ClientConnectionError("refused"), Verdict.RETRY_CONNECT),
        (aiohttp.ServerDisconnectedError(), Verdict.RETRY_CONNECT),  # dropped connection
        (aiohttp.ClientPayloadError("truncated"), Verdict.RETRY_CONNECT),
        (aiohttp.ServerTimeoutError(), Verdict.TIMEOUT),  # read timeout: the request's time is up
        (TimeoutError(), Verdict.TIMEOUT),
        (ValueError("a bug"), None),  # not an upstream outcome: re-raised
    ],
)
def test_classify(outcome: int | BaseException, verdict: Verdict | None) -> None:
    assert classify(outcome) is verdict


def test_retry_verdicts_and_statuses() -> None:
    assert {v for v in Verdict if v.retry} == {Verdict.RETRY_STATUS, Verdict.RETRY_CONNECT}
    assert {s for s in range(100, 600) if classify(s) is Verdict.RETRY_STATUS} == RETRY_STATUSES
