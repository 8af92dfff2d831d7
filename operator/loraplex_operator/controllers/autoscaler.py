"""The autoscaler loop (I/O): poll sidecars' /v1/stats, size pools, note adapter demand.

Every tick it visits the namespaces with tracked pools whose poll interval
has elapsed, fetches /v1/stats from every ready pod labelled
loraplex.io/stats=true (pool pods and the gateway), sums them, and for each
pool asks `sizing.decide` for a replica count, written through the pool's
scale subresource (as an HPA would). Unreachable sidecars are "no data":
logged, never fatal, and with no data at all nothing is changed.

Residency: each pod's sidecar also reports which adapters its worker holds
in which tier. The last report of every ready pod (kept for a grace period
when a poll misses it, dropped when the pod is no longer ready) is
aggregated per adapter (`logic.residency`) and compared with each adapter's
status in kopf's index; only the adapters whose value changed are patched,
at most `max_status_writes` per poll and one sync per namespace at a time,
so an unchanged fleet of 2,000 adapters costs no write at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loraplex.egress import aiohttp_trace_configs
from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, KubeError
from loraplex_operator.clients.sidecars import fetch_stats
from loraplex_operator.logic.conditions import rfc3339
from loraplex_operator.logic.podstate import is_pod_ready
from loraplex_operator.logic.residency import PodResidency, due_writes
from loraplex_operator.logic.residency import aggregate as aggregate_residency
from loraplex_operator.logic.routes import endpoint_url
from loraplex_operator.logic.sizing import Load, Sample, ScalingPolicy, decide, raw_replicas, stabilized_need
from loraplex_operator.logic.specs import PoolSpec
from loraplex_operator.logic.stats import AdapterLoad, PoolLoad, StatsSnapshot, aggregate

log = logging.getLogger(__name__)
RESIDENCY_GRACE_S = 30.0  # a ready pod's last report is kept this long (at least 3 polls) when a poll misses it
RECENT_WRITE_S = 30.0  # our own write may not be in kopf's index yet: not repeated within this time


@dataclass
class _PoolTrack:
    spec: PoolSpec
    replicas: int
    history: tuple[Sample, ...] = ()
    last_poll: float = 0.0
    load: PoolLoad | None = None
    failures: int = 0


@dataclass
class _NamespaceDemand:
    # adapter -> (need, last time demand reached it)
    needs: dict[str, tuple[int, float]] = field(default_factory=dict)
    adapters: dict[str, AdapterLoad] = field(default_factory=dict)


class Autoscaler:
    def __init__(
        self,
        kube: Kube,
        poke_pool: Callable[[str, str], None],
        mark_table: Callable[[str], None],
        tick_s: float = 5.0,
        stats_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        patch_adapter_status: bool = True,
        stats_port: int = c.SIDECAR_PORT,
        adapter_source: Callable[[str], list[dict[str, Any]] | None] = lambda ns: None,
        max_status_writes: int = 500,
    ) -> None:
        self.kube = kube
        self.poke_pool = poke_pool
        self.mark_table = mark_table
        self.tick_s = tick_s
        self.stats_timeout_s = stats_timeout_s
        self.clock = clock
        self.patch_adapter_status = patch_adapter_status
        self.stats_port = stats_port
        # The namespace's adapters as kopf's index holds them (None until it is complete).
        self.adapter_source = adapter_source
        self.max_status_writes = max_status_writes
        self._residency: dict[str, dict[str, tuple[PodResidency, float]]] = {}  # ns -> pod -> (report, when)
        self._written: dict[str, dict[str, tuple[dict[str, Any], float]]] = {}  # ns -> adapter -> (fragment, when)
        self._syncs: dict[str, asyncio.Task[None]] = {}
        self.residency_writes = 0
        self._pools: dict[tuple[str, str], _PoolTrack] = {}
        self._demand: dict[str, _NamespaceDemand] = {}
        self.polls = 0
        self.failed_polls = 0

    # -- called by the pool reconcile --------------------------------------

    def track(self, namespace: str, name: str, spec: PoolSpec, replicas: int) -> None:
        t = self._pools.get((namespace, name))
        if t is None:
            self._pools[(namespace, name)] = _PoolTrack(spec, replicas)
        else:
            t.spec, t.replicas = spec, replicas

    def forget(self, namespace: str, name: str) -> None:
        self._pools.pop((namespace, name), None)
        if not any(ns == namespace for ns, _ in self._pools):
            self._demand.pop(namespace, None)
            self._residency.pop(namespace, None)
            self._written.pop(namespace, None)

    def tracked(self) -> list[tuple[str, str]]:
        return list(self._pools)

    def pool_sizes(self) -> list[tuple[tuple[str, str], PoolSpec, int]]:
        """Each tracked pool's (namespace, name), spec and replicas, sorted (the operator's metrics)."""
        return [(key, t.spec, t.replicas) for key, t in sorted(self._pools.items())]

    def pool_load(self, namespace: str, name: str) -> PoolLoad | None:
        t = self._pools.get((namespace, name))
        return t.load if t else None

    def adapter_needs(self, namespace: str) -> dict[str, int]:
        d = self._demand.get(namespace)
        return {n: need for n, (need, _) in d.needs.items()} if d else {}

    # -- the loop ----------------------------------------------------------

    async def run(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=64)
        # Pod IPs are dialled here: the egress guard (on in tests) keeps them on the machine.
        async with aiohttp.ClientSession(connector=connector, trace_configs=aiohttp_trace_configs()) as session:
            while True:
                try:
                    await self.tick(session)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the loop must survive anything
                    log.exception("autoscaler tick failed")
                await asyncio.sleep(self.tick_s)

    async def tick(self, session: object) -> None:
        now = self.clock()
        due: dict[str, list[str]] = {}
        for (ns, name), t in list(self._pools.items()):
            if now - t.last_poll >= t.spec.autoscaling.poll_interval_seconds:
                due.setdefault(ns, []).append(name)
        for ns, names in due.items():
            await self._poll_namespace(session, ns, names, now)

    async def _poll_namespace(self, session: object, ns: str, names: list[str], now: float) -> None:
        try:
            pods = await self.kube.run(self.kube.list, "v1", "pods", ns, f"{c.LABEL_STATS}=true", True)
        except KubeError as e:
            log.warning("autoscaler: cannot list pods in %s: %s", ns, e)
            return
        ready = [p for p in pods if is_pod_ready(p)]
        urls = [endpoint_url(p["status"]["podIP"], self.stats_port) + c.STATS_PATH for p in ready]
        results = await asyncio.gather(*(fetch_stats(session, u, self.stats_timeout_s) for u in urls))
        self._note_residency(ns, [(p["metadata"]["name"], r) for p, r in zip(ready, results, strict=True)], now)
        answered = [r for r in results if r is not None]
        self.polls += len(urls)
        self.failed_polls += len(urls) - len(answered)
        snapshot = aggregate(answered)
        for name in names:
            t = self._pools.get((ns, name))
            if t is None:
                continue
            t.last_poll = now
            if not answered:
                t.failures += 1
                if urls and (t.failures == 1 or t.failures % 20 == 0):
                    log.info(
                        "autoscaler: no stats for pool %s/%s (%d sidecar(s) unreachable, %d poll(s) in a row);"
                        " keeping %d replica(s)",
                        ns,
                        name,
                        len(urls),
                        t.failures,
                        t.replicas,
                    )
                continue
            t.failures = 0
            await self._size_pool(ns, name, t, snapshot.pools.get(name, PoolLoad()), now)
        self._note_adapters(ns, snapshot, now)

    def _note_residency(self, ns: str, answers: list[tuple[str, StatsSnapshot | None]], now: float) -> None:
        """Keep each ready pod's latest report; start a status sync for the namespace unless one is running."""
        reports = self._residency.setdefault(ns, {})
        for pod, snap in answers:
            if snap is not None and snap.resident is not None:
                reports[pod] = (snap.resident, now)
        intervals = [t.spec.autoscaling.poll_interval_seconds for (n, _), t in self._pools.items() if n == ns]
        grace = max(RESIDENCY_GRACE_S, 3 * max(intervals, default=0))
        ready = {pod for pod, _ in answers}
        for pod, (_, when) in list(reports.items()):
            if pod not in ready or now - when > grace:
                del reports[pod]
        if not self.patch_adapter_status or ns in self._syncs:
            return
        residency = aggregate_residency({pod: r for pod, (r, _) in reports.items()})
        task = asyncio.get_running_loop().create_task(self._sync_residency(ns, residency, now))
        self._syncs[ns] = task
        task.add_done_callback(lambda _t: self._syncs.pop(ns, None))

    async def _sync_residency(self, ns: str, residency: dict[str, Any], now: float) -> None:
        try:
            await self._write_residency(ns, residency, now)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a task nobody awaits: log here, the next poll tries again
            log.exception("autoscaler: residency sync for %s failed", ns)

    async def _write_residency(self, ns: str, residency: dict[str, Any], now: float) -> None:
        adapters = self.adapter_source(ns)
        if adapters is None:
            return  # no complete view of the adapters yet: the next poll tries again
        written = self._written.setdefault(ns, {})
        for name, (_, when) in list(written.items()):
            if now - when >= RECENT_WRITE_S:
                del written[name]
        due = sorted(due_writes(adapters, residency, {n: f for n, (f, _) in written.items()}).items())
        if len(due) > self.max_status_writes:
            n = self.max_status_writes
            log.info("autoscaler: %d adapter residencies changed in %s; writing %d now", len(due), ns, n)
            due = due[: self.max_status_writes]  # level-triggered: the rest are still different at the next poll
        limit = asyncio.Semaphore(8)

        async def write(name: str, fragment: dict[str, Any]) -> None:
            async with limit:
                try:
                    await self.kube.run(
                        self.kube.merge_patch, c.API_VERSION, c.ADAPTER_PLURAL, ns, name, {"status": fragment}, "status"
                    )
                except KubeError as e:
                    if e.status != 404:
                        log.warning("autoscaler: cannot write adapter %s/%s residency: %s", ns, name, e)
                    return
                written[name] = (fragment, now)
                self.residency_writes += 1

        await asyncio.gather(*(write(n, f) for n, f in due))

    async def _size_pool(self, ns: str, name: str, t: _PoolTrack, load: PoolLoad, now: float) -> None:
        old_load, t.load = t.load, load
        if old_load is None or (round(old_load.request_rate, 3), round(old_load.mean_service_s, 3)) != (
            round(load.request_rate, 3),
            round(load.mean_service_s, 3),
        ):
            self.poke_pool(ns, name)  # status shows the new figures
        spec = t.spec
        if not spec.autoscaling.enabled:
            return
        policy = ScalingPolicy(
            spec.min_replicas,
            spec.max_replicas,
            spec.autoscaling.target_utilization,
            spec.autoscaling.scale_up_stabilization_seconds,
            spec.autoscaling.scale_down_stabilization_seconds,
            spec.autoscaling.idle_to_zero_seconds,
        )
        decision = decide(
            policy,
            t.replicas,
            Load(load.request_rate, load.mean_service_s, load.in_flight),
            now,
            t.history,
            load.last_request_time,
        )
        t.history = decision.history
        if decision.replicas == t.replicas:
            return
        log.info(
            "autoscaler: pool %s/%s %d -> %d replicas (%s; rate %.3f/s, service %.2fs, in flight %d)",
            ns,
            name,
            t.replicas,
            decision.replicas,
            decision.reason,
            load.request_rate,
            load.mean_service_s,
            load.in_flight,
        )
        try:
            await self.kube.run(
                self.kube.merge_patch,
                c.API_VERSION,
                c.POOL_PLURAL,
                ns,
                name,
                {"spec": {"replicas": decision.replicas}},
                "scale",
            )
            t.replicas = decision.replicas
        except KubeError as e:
            log.warning("autoscaler: cannot scale pool %s/%s: %s", ns, name, e)

    def _note_adapters(self, ns: str, snapshot: StatsSnapshot, now: float) -> None:
        demand = self._demand.setdefault(ns, _NamespaceDemand())
        changed = False
        for name, a in snapshot.adapters.items():
            track = self._pools.get((ns, a.pool))
            pool_load = snapshot.pools.get(a.pool)
            if track is None or pool_load is None:
                continue
            raw = raw_replicas(
                Load(a.request_rate, pool_load.mean_service_s), track.spec.autoscaling.target_utilization
            )
            prev = demand.needs.get(name)
            need, since = stabilized_need(
                prev[0] if prev else None,
                prev[1] if prev else None,
                raw,
                now,
                track.spec.autoscaling.scale_down_stabilization_seconds,
            )
            if prev is None or prev[0] != need:
                changed = True
            demand.needs[name] = (need, since)
            old = demand.adapters.get(name)
            demand.adapters[name] = a
            if self.patch_adapter_status and _adapter_status_due(old, a):
                asyncio.get_running_loop().create_task(self._patch_adapter(ns, name, a))
        if changed:
            self.mark_table(ns)

    async def _patch_adapter(self, ns: str, name: str, a: AdapterLoad) -> None:
        status: dict[str, Any] = {"requestRate": round(a.request_rate, 3)}
        if a.last_request_time:
            status["lastRequestTime"] = rfc3339(a.last_request_time)
        try:
            await self.kube.run(
                self.kube.merge_patch, c.API_VERSION, c.ADAPTER_PLURAL, ns, name, {"status": status}, "status"
            )
        except KubeError as e:
            if e.status != 404:
                log.debug("autoscaler: cannot update adapter %s/%s status: %s", ns, name, e)


def _adapter_status_due(old: AdapterLoad | None, new: AdapterLoad) -> bool:
    """Write an adapter's rate only when it moved noticeably (2,000 adapters x every poll is too many writes)."""
    if old is None:
        return True
    if abs(new.request_rate - old.request_rate) > max(0.01, 0.1 * old.request_rate):
        return True
    return (new.last_request_time or 0) - (old.last_request_time or 0) >= 60
