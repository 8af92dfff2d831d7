"""LoraAdapter reconciles: a work queue fed by the adapter reflector's events (I/O around logic/adapter_work.py).

The operator's reflector hands every adapter event to `observe` (kopf has no
handler for adapters, so it keeps no diff base or progress on them and writes
nothing). An adapter whose status has not observed its spec's generation is
queued; `workers` tasks reconcile queued adapters, each adapter by one task at
a time, from the newest body seen. A reconcile that ends short of Ready raises
`Retry`: the adapter is queued again after its backoff (timers here). A new or
changed pool wakes the waiting adapters of its namespace at once (`wake`); a
deleted pool, the adapters it served (`wake_adapters`). Nothing is written for
either: a created adapter costs one write (its status) and two watch events,
where kopf's change handlers cost two writes and three events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from loraplex_operator.controllers.adapter_controller import Retry
from loraplex_operator.logic.adapter_work import is_waiting, needs_reconcile
from loraplex_operator.logic.backoff import retry_delay

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Reconcile = Callable[[dict[str, Any], int], Awaitable[None]]
Fetch = Callable[[str, str], Awaitable[dict[str, Any] | None]]


class AdapterQueue:
    def __init__(
        self,
        reconcile: Reconcile,
        fetch: Fetch,
        workers: int = 16,
        first_retry_s: float = 5.0,
    ) -> None:
        self._reconcile = reconcile
        self._fetch = fetch
        self.workers = workers
        self.first_retry_s = first_retry_s
        self._bodies: dict[Key, dict[str, Any]] = {}  # the newest body of each adapter with work pending
        self._attempts: dict[Key, int] = {}  # reconciles short of Ready in a row (the backoff)
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._queue: asyncio.Queue[Key] | None = None
        self._queued: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()  # queued again while being reconciled
        self._fetch_wanted: set[Key] = set()  # woken with no body at hand: read it first
        self.reconciles = 0
        self.retries = 0

    # -- fed by kopf's events and the pool handlers (no I/O) ---------------------

    def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        """One watch event. The queue keeps `body` itself (the reflector's, fresh from JSON, held by nobody else)."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if event_type == "DELETED":
            self.forget(key)
        elif needs_reconcile(body):
            self._bodies[key] = body
            self._attempts.pop(key, None)  # a new spec starts a new backoff
            self._cancel_timer(key)
            self._enqueue(key)
        elif key in self._bodies:
            self._bodies[key] = body  # a retry works on the newest status
        elif is_waiting(body):
            # First sight of a waiting adapter (the operator started): retry it, as kopf resumed its handler.
            self._bodies[key] = body
            self._schedule(key, self.first_retry_s)

    def wake(self, namespace: str) -> None:
        """A pool appeared or changed: every waiting adapter of the namespace, now, with its backoff reset."""
        for key in [k for k in (*self._timers, *self._active) if k[0] == namespace]:
            self._attempts.pop(key, None)
            self._cancel_timer(key)
            self._enqueue(key)

    def wake_adapters(self, namespace: str, names: Iterable[str]) -> None:
        """These adapters, now (a deleted pool's: their status must stop saying Ready)."""
        for name in names:
            key = (namespace, name)
            if key not in self._bodies:
                self._fetch_wanted.add(key)
            self._cancel_timer(key)
            self._enqueue(key)

    def forget(self, key: Key) -> None:
        self._cancel_timer(key)
        self._bodies.pop(key, None)
        self._attempts.pop(key, None)
        self._fetch_wanted.discard(key)

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._queued),
            "active": len(self._active),
            "waiting": len(self._timers),
            "reconciles": self.reconciles,
            "retries": self.retries,
        }

    # -- the workers ----------------------------------------------------------------

    async def run(self) -> None:
        self._queue = asyncio.Queue()
        for key in self._queued:  # observed before the workers started
            self._queue.put_nowait(key)
        await asyncio.gather(*(self._work() for _ in range(self.workers)))

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await self._run_one(key)
            finally:
                self._active.discard(key)
                if key in self._again:
                    # A new spec or a wake came in meanwhile: again now, with a fresh backoff.
                    self._again.discard(key)
                    self._attempts.pop(key, None)
                    self._cancel_timer(key)
                    self._enqueue(key)

    async def _run_one(self, key: Key) -> None:
        attempt = self._attempts.get(key, 0)
        try:
            body = self._bodies.get(key)
            if body is None:
                if key not in self._fetch_wanted:
                    return  # deleted while queued
                self._fetch_wanted.discard(key)
                body = await self._fetch(*key)
                if body is None:
                    self.forget(key)
                    return
                self._bodies[key] = body
            self.reconciles += 1
            await self._reconcile(body, attempt)
        except asyncio.CancelledError:
            raise
        except Retry as e:
            self._retry_later(key, attempt, e.delay, str(e))
            return
        except Exception as e:  # noqa: BLE001 - one adapter's failure must not stop the others
            log.exception("adapter %s/%s: reconcile failed", *key)
            self._retry_later(key, attempt, retry_delay(attempt), type(e).__name__)
            return
        # Done until its spec changes or a pool wakes it.
        self._attempts.pop(key, None)
        if key not in self._again:
            self._bodies.pop(key, None)

    def _retry_later(self, key: Key, attempt: int, delay: float, why: str) -> None:
        self._attempts[key] = attempt + 1
        self.retries += 1
        log.info("adapter %s/%s not ready (%s); retry %d in %.1fs", key[0], key[1], why, attempt + 1, delay)
        if key in self._bodies:
            self._schedule(key, delay)

    # -- helpers --------------------------------------------------------------------

    def _enqueue(self, key: Key) -> None:
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            if self._queue is not None:
                self._queue.put_nowait(key)

    def _schedule(self, key: Key, delay: float) -> None:
        self._cancel_timer(key)
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._enqueue(key)

    def _cancel_timer(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
