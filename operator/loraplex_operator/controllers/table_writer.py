"""The routing-table writer (I/O): one debounced writer per namespace.

Anything that may change a namespace's table (a pool, adapter or pod event,
the autoscaler's adapter demand, a periodic resync) calls `mark(namespace)`.
The namespace's single writer task waits until changes pause for
`debounce_s` (but never longer than `max_delay_s` after the first one, and
at least `min_interval_s` after its previous flush), then rebuilds the whole
table from the cluster's current state and writes only the shards whose
bytes changed. A burst of 2,000 adapters is therefore a handful of flushes;
a restart, a missed event or a duplicate one all converge to the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, KubeError
from loraplex_operator.logic.flushing import flush_due
from loraplex_operator.logic.podstate import ReadyPod, is_pod_ready
from loraplex_operator.logic.routes import BuildMemo, TableBuild, build_table
from loraplex_operator.logic.shards import (
    SplitMemo,
    empty_table_configmaps,
    is_empty_marker,
    plan,
    shard_configmaps,
    split_table,
)

log = logging.getLogger(__name__)


@dataclass
class _NsState:
    dirty: bool = False
    first_mark: float | None = None
    last_mark: float = 0.0
    last_flush: float = 0.0
    last_cost: float = 0.0  # seconds the last flush took (spaces the next one: logic/flushing.py)
    task: asyncio.Task[None] | None = None
    empty: bool = False  # last flush found no pool, no adapter and no table


@dataclass
class WriterStats:
    flushes: int = 0
    writes: int = 0
    deletes: int = 0
    errors: int = 0
    by_namespace: Counter[str] = field(default_factory=Counter)


class TableWriter:
    def __init__(
        self,
        kube: Kube,
        demand: Callable[[str], Mapping[str, int]] = lambda ns: {},
        debounce_s: float = 0.5,
        max_delay_s: float = 3.0,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.demand = demand
        self.debounce_s = debounce_s
        self.max_delay_s = max_delay_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.stats = WriterStats()
        self._ns: dict[str, _NsState] = {}
        # A complete, current view of a namespace's adapters (kopf's index), once available;
        # until then each flush LISTs them.
        self.adapter_source: Callable[[str], list[dict]] | None = None
        # (namespace, ConfigMap) -> sha256 of the data we last wrote: our own writes' watch events
        # need no flush; anyone else's change (a deletion, an edit, a removed label) does.
        self._written: dict[tuple[str, str], str] = {}
        # Namespaces where a table was seen (written, listed or watched): when their last pool goes,
        # the table becomes an explicitly empty one, even if the garbage collector deleted the shards first.
        self._had_table: set[str] = set()
        # Per namespace: what the last build and split worked out per adapter (reused while unchanged).
        self._memos: dict[str, _Memo] = {}

    def table_event(self, namespace: str, name: str, deleted: bool, data: str | None) -> bool:
        """A routing-table ConfigMap changed (watch event); restore it unless we wrote exactly that. True: marked."""
        self._had_table.add(namespace)
        if not deleted and data is not None and self._written.get((namespace, name)) == _digest(data):
            return False
        self.mark(namespace)
        return True

    def mark(self, namespace: str) -> None:
        """Note that `namespace`'s table may be stale; a write follows soon (coalesced)."""
        st = self._ns.setdefault(namespace, _NsState())
        now = self.clock()
        st.dirty = True
        st.last_mark = now
        if st.first_mark is None:
            st.first_mark = now
        if st.task is None or st.task.done():
            st.task = asyncio.get_running_loop().create_task(self._run(namespace, st), name=f"table-writer:{namespace}")

    def namespaces(self) -> list[str]:
        return sorted(self._ns)

    async def idle(self) -> None:
        """Wait until no namespace has a pending write (tests, shutdown)."""
        while any(st.task is not None and not st.task.done() for st in self._ns.values()):
            await asyncio.sleep(0.05)

    async def _run(self, namespace: str, st: _NsState) -> None:
        retry = 0
        while st.dirty:
            while True:
                now = self.clock()
                due = flush_due(
                    now,
                    st.first_mark,
                    st.last_mark,
                    st.last_flush,
                    st.last_cost,
                    self.debounce_s,
                    self.max_delay_s,
                    self.min_interval_s,
                )
                if now >= due:
                    break
                await asyncio.sleep(due - now)
            st.dirty, st.first_mark = False, None
            started = self.clock()
            try:
                await self.flush(namespace)
                retry = 0
            except asyncio.CancelledError:
                raise
            except KubeError as e:
                if _namespace_going_away(e):
                    # Everything in it is being deleted anyway (the table with it).
                    log.debug("routing table for %s: namespace is being deleted", namespace)
                    st.dirty = False
                    continue
                st.dirty = True
                retry = await self._backoff(namespace, st, retry, e)
            except Exception as e:  # noqa: BLE001 - keep the writer alive; retry the whole flush
                st.dirty = True
                retry = await self._backoff(namespace, st, retry, e)
            st.last_flush = self.clock()
            st.last_cost = st.last_flush - started
        if st.empty and not st.dirty and self._ns.get(namespace) is st:
            del self._ns[namespace]  # nothing to route there any more: stop resyncing it
            self._memos.pop(namespace, None)

    async def _backoff(self, namespace: str, st: _NsState, retry: int, e: Exception) -> int:
        self.stats.errors += 1
        retry += 1
        delay = min(30.0, 0.5 * 2**retry)
        log.warning("routing table for %s not written (%s); retrying in %.1fs", namespace, e, delay)
        st.first_mark = st.first_mark or self.clock()
        await asyncio.sleep(delay)
        return retry

    async def flush(self, namespace: str) -> TableBuild | None:
        """Rebuild `namespace`'s table from the cluster and write what changed."""
        kube = self.kube
        source = self.adapter_source
        started = time.monotonic()
        pools, pods, existing = await asyncio.gather(
            kube.run(kube.list, c.API_VERSION, c.POOL_PLURAL, namespace, None, True),
            kube.run(kube.list, "v1", "pods", namespace, f"{c.LABEL_COMPONENT}=inference,{c.LABEL_POOL}", True),
            kube.run(kube.list, "v1", "configmaps", namespace, f"{c.LABEL_ROUTING_TABLE}=true", True),
        )
        if source is not None:
            adapters = source(namespace)
        else:
            adapters = await kube.run(kube.list, c.API_VERSION, c.ADAPTER_PLURAL, namespace, None, True)
        ready: dict[str, list[ReadyPod]] = {}
        for pod in pods:
            if is_pod_ready(pod):
                pool = pod["metadata"]["labels"][c.LABEL_POOL]
                ready.setdefault(pool, []).append(ReadyPod(pod["metadata"]["name"], pod["status"]["podIP"]))
        live_pools = [p for p in pools if not p["metadata"].get("deletionTimestamp")]
        if existing:
            self._had_table.add(namespace)
        st = self._ns.get(namespace)
        if st is not None:
            st.empty = not (pools or adapters or [cm for cm in existing if not is_empty_marker(cm)])
        read_at = time.monotonic()
        memo = self._memos.setdefault(namespace, _Memo())
        demand = self.demand(namespace)
        # Off the event loop: at tens of thousands of adapters a rebuild takes long enough to stall kopf's handlers.
        build, docs = await asyncio.to_thread(memo.build, live_pools, adapters, ready, demand)
        built_at = time.monotonic()
        self.stats.flushes += 1
        if live_pools:
            desired = shard_configmaps(namespace, docs, live_pools)
        elif existing or namespace in self._had_table:
            # No pool left: an explicitly empty table (sidecars refuse an unexplained empty one).
            desired = empty_table_configmaps(namespace)
        else:
            desired = []
        todo = plan(desired, existing)
        for cm in (*todo.create, *todo.update):
            await kube.run(kube.apply, cm)
            self._written[(namespace, cm["metadata"]["name"])] = _digest(cm["data"][c.TABLE_DATA_KEY])
            self.stats.writes += 1
            self.stats.by_namespace[namespace] += 1
        for name in todo.delete:
            await kube.run(kube.delete, "v1", "configmaps", namespace, name)
            self._written.pop((namespace, name), None)
            self.stats.deletes += 1
        if not todo.empty:
            log.info(
                "routing table %s: %d pool(s), %d adapter(s), %d shard(s); wrote %d, deleted %d "
                "(read %.2fs, built %.2fs, written %.2fs)",
                namespace,
                len(build.table.pools),
                len(build.table.adapters),
                len(desired),
                len(todo.create) + len(todo.update),
                len(todo.delete),
                read_at - started,
                built_at - read_at,
                time.monotonic() - built_at,
            )
        await self._note_pool_counts(namespace, live_pools, build)
        return build

    async def _note_pool_counts(self, namespace: str, pools: list[dict], build: TableBuild) -> None:
        counts = Counter(build.routed.values())
        for pool in pools:
            name = pool["metadata"]["name"]
            if (pool.get("status") or {}).get("adapters") != counts.get(name, 0):
                try:
                    await self.kube.run(
                        self.kube.merge_patch,
                        c.API_VERSION,
                        c.POOL_PLURAL,
                        namespace,
                        name,
                        {"status": {"adapters": counts.get(name, 0)}},
                        "status",
                    )
                except KubeError as e:
                    if e.status != 404:
                        log.warning("cannot update adapter count of pool %s/%s: %s", namespace, name, e)


class _Memo:
    """One namespace's build and split memos; `build` is called from one thread at a time (the flush)."""

    def __init__(self) -> None:
        self.build_memo = BuildMemo()
        self.split_memo = SplitMemo()

    def build(
        self, pools: list[dict], adapters: list[dict], ready: dict[str, list[ReadyPod]], demand: Mapping[str, int]
    ) -> tuple[TableBuild, list[str]]:
        build = build_table(pools, adapters, ready, demand, memo=self.build_memo)
        return build, split_table(build.table, memo=self.split_memo) if pools else []


def _digest(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def _namespace_going_away(e: KubeError) -> bool:
    return (e.status == 403 and "being terminated" in e.message) or (e.status == 404 and "namespaces" in e.message)
