"""The Kubernetes client's lanes: calls on a lane never queue behind the main executor's (no apiserver needed)."""

from __future__ import annotations

import asyncio
import threading

from kubernetes import client

from loraplex_operator.clients.kube import USER_AGENT, Kube


def test_a_lane_runs_while_the_main_executor_is_full() -> None:
    kube = Kube(client.Configuration(), workers=2)
    lane = kube.lane(1, "table")
    release = threading.Event()

    async def scenario() -> str:
        # Both main threads busy, and more work queued behind them (a burst of status patches).
        blocked = [asyncio.ensure_future(kube.run(release.wait, 10)) for _ in range(6)]
        await asyncio.sleep(0.1)
        try:
            return await asyncio.wait_for(lane.run(threading.current_thread), timeout=2)
        finally:
            release.set()
            await asyncio.gather(*blocked)

    try:
        thread = asyncio.run(scenario())
        assert thread.name.startswith("kube-table")
        # The same client and counters: the operator's /healthz counts a lane's requests too.
        assert lane.api is kube.api and lane.requests_by_verb is kube.requests_by_verb
        assert kube.api.user_agent == USER_AGENT
    finally:
        kube.close()
