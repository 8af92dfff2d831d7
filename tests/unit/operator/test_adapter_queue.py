"""The adapter work queue and its decisions: what an event asks for, retries, wakes, one reconcile at a time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loraplex_operator.controllers.adapter_controller import Retry
from loraplex_operator.controllers.adapter_queue import AdapterQueue
from loraplex_operator.logic.adapter_work import is_waiting, needs_reconcile


def adapter(name: str = "a", generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "generation": generation}, "spec": {}, "status": status}


def test_needs_reconcile_and_waiting() -> None:
    assert needs_reconcile(adapter())  # no status yet
    assert needs_reconcile(adapter(generation=2, observedGeneration=1, phase="Ready"))
    assert not needs_reconcile(adapter(observedGeneration=1, phase="Pending"))
    gone = adapter()
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not needs_reconcile(gone)
    assert is_waiting(adapter(phase="Pending")) and is_waiting(adapter(phase="Failed"))
    assert not is_waiting(adapter(phase="Ready"))
    conflict = [{"type": "AliasConflict", "status": "True"}]
    assert is_waiting(adapter(phase="Ready", conditions=conflict))


class Harness:
    """A queue whose reconcile records its calls and answers from a script (Ready, or Retry after a delay)."""

    def __init__(self, workers: int = 4) -> None:
        self.calls: list[tuple[str, int, int]] = []  # (name, generation, attempt)
        self.retry_delay: dict[str, float] = {}  # name -> Retry with this delay while set
        self.running: set[str] = set()
        self.overlap = False
        self.store: dict[str, dict[str, Any]] = {}
        self.q = AdapterQueue(self.reconcile, self.fetch, workers=workers, first_retry_s=0.05)

    async def reconcile(self, body: dict[str, Any], attempt: int) -> None:
        name = body["metadata"]["name"]
        self.overlap |= name in self.running
        self.running.add(name)
        self.calls.append((name, body["metadata"]["generation"], attempt))
        await asyncio.sleep(0.02)
        self.running.discard(name)
        if name in self.retry_delay:
            raise Retry("PoolNotFound: no pool", self.retry_delay[name])

    async def fetch(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.store.get(name)


def run(scenario) -> None:
    async def main() -> None:
        h = Harness()
        task = asyncio.create_task(h.q.run())
        try:
            await scenario(h)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_a_created_adapter_is_reconciled_once_and_its_own_status_event_does_nothing() -> None:
    async def scenario(h: Harness) -> None:
        h.q.observe("ADDED", adapter())
        await asyncio.sleep(0.1)
        assert h.calls == [("a", 1, 0)]
        h.q.observe("MODIFIED", adapter(observedGeneration=1, phase="Ready"))  # the status it wrote
        h.q.observe(None, adapter(observedGeneration=1, phase="Ready"))  # a restart's listing
        await asyncio.sleep(0.1)
        assert h.calls == [("a", 1, 0)]
        assert h.q.stats() == {"queued": 0, "active": 0, "waiting": 0, "reconciles": 1, "retries": 0}

    run(scenario)


def test_retries_back_off_and_a_spec_change_starts_again_at_once() -> None:
    async def scenario(h: Harness) -> None:
        h.retry_delay["a"] = 0.1
        h.q.observe("ADDED", adapter())
        await asyncio.sleep(0.05)
        h.q.observe("MODIFIED", adapter(observedGeneration=1, phase="Pending"))  # its own Pending status
        await asyncio.sleep(0.3)
        attempts = [a for _, _, a in h.calls]
        assert attempts[:3] == [0, 1, 2], h.calls  # retried by its timer, the attempt counting up
        assert h.q.stats()["waiting"] == 1
        # A new spec: reconciled now, its backoff reset.
        h.q.observe("MODIFIED", adapter(generation=2, observedGeneration=1, phase="Pending"))
        await asyncio.sleep(0.03)
        assert h.calls[-1] == ("a", 2, 0)
        # Deleted: its timer goes, nothing runs again.
        h.q.observe("DELETED", adapter(generation=2, observedGeneration=2, phase="Pending"))
        n = len(h.calls)
        await asyncio.sleep(0.3)
        assert len(h.calls) == n and h.q.stats()["waiting"] == 0

    run(scenario)


def test_a_woken_namespace_reconciles_its_waiting_adapters_now() -> None:
    async def scenario(h: Harness) -> None:
        h.retry_delay["a"] = 30.0  # its next retry far away
        h.q.observe("ADDED", adapter())
        await asyncio.sleep(0.05)
        assert h.calls == [("a", 1, 0)]
        del h.retry_delay["a"]  # the pool it waited for exists now
        h.q.wake("other-namespace")
        await asyncio.sleep(0.05)
        assert len(h.calls) == 1
        h.q.wake("ns")
        await asyncio.sleep(0.05)
        assert h.calls == [("a", 1, 0), ("a", 1, 0)]  # now, with its backoff reset
        assert h.q.stats()["waiting"] == 0

    run(scenario)


def test_waiting_adapters_seen_at_start_are_retried_and_woken_ones_are_read_first() -> None:
    async def scenario(h: Harness) -> None:
        h.q.observe(None, adapter("p", observedGeneration=1, phase="Pending"))  # a restart's listing
        h.q.observe(None, adapter("r", observedGeneration=1, phase="Ready"))
        await asyncio.sleep(0.15)
        assert h.calls == [("p", 1, 0)]
        # A deleted pool's adapters: not held here (they were Ready), so read before their reconcile.
        h.store["r"] = adapter("r", generation=3, observedGeneration=3, phase="Ready")
        h.q.wake_adapters("ns", ["r", "gone"])
        await asyncio.sleep(0.05)
        assert h.calls[1:] == [("r", 3, 0)]

    run(scenario)


def test_one_reconcile_at_a_time_per_adapter_and_none_lost() -> None:
    async def scenario(h: Harness) -> None:
        for gen in range(1, 6):  # edits arriving while it is being reconciled
            h.q.observe("MODIFIED", adapter(generation=gen, observedGeneration=0))
            await asyncio.sleep(0.005)
        for i in range(20):
            h.q.observe("ADDED", adapter(f"x{i}"))
        await asyncio.sleep(0.5)
        assert not h.overlap
        mine = [g for n, g, _ in h.calls if n == "a"]
        assert mine[-1] == 5 and len(mine) <= 3, mine  # coalesced, and the newest spec reconciled last
        assert {n for n, _, _ in h.calls} == {"a"} | {f"x{i}" for i in range(20)}

    run(scenario)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("x")])
def test_an_unexpected_error_is_retried_not_fatal(exc: Exception) -> None:
    async def scenario(h: Harness) -> None:
        failures = [exc]

        async def flaky(body: dict[str, Any], attempt: int) -> None:
            h.calls.append((body["metadata"]["name"], 1, attempt))
            if failures:
                raise failures.pop()

        h.q._reconcile = flaky
        h.q.first_retry_s = 0.05
        h.q.observe("ADDED", adapter())
        await asyncio.sleep(0.05)
        assert h.calls == [("a", 1, 0)] and h.q.stats()["waiting"] == 1
        h.q.wake("ns")
        await asyncio.sleep(0.05)
        assert h.calls == [("a", 1, 0), ("a", 1, 0)] and h.q.stats()["waiting"] == 0

    run(scenario)


def test_a_wake_during_a_reconcile_runs_it_again_with_a_fresh_backoff() -> None:
    async def scenario(h: Harness) -> None:
        h.retry_delay["a"] = 30.0
        h.q.observe("ADDED", adapter())
        await asyncio.sleep(0.005)  # being reconciled now
        h.q.wake("ns")
        await asyncio.sleep(0.1)
        assert [attempt for _, _, attempt in h.calls] == [0, 0]
        assert h.q.stats()["waiting"] == 1  # one timer, not one per run

    run(scenario)
