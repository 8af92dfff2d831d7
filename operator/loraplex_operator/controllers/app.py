"""The operator process: wiring, leader election, kopf and the background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import kopf

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, KubeError
from loraplex_operator.controllers.adapter_controller import AdapterController
from loraplex_operator.controllers.adapter_queue import AdapterQueue
from loraplex_operator.controllers.autoscaler import Autoscaler
from loraplex_operator.controllers.handlers import build_registry, build_settings
from loraplex_operator.controllers.health import HealthServer
from loraplex_operator.controllers.leader import LeaderElector
from loraplex_operator.controllers.metrics import exposition, metrics_registry
from loraplex_operator.controllers.pool_controller import PoolController
from loraplex_operator.controllers.reflector import Reflector
from loraplex_operator.controllers.stores import AdapterStore, PoolStore, object_key
from loraplex_operator.controllers.table_writer import TableWriter

log = logging.getLogger(__name__)


@dataclass
class OperatorConfig:
    namespaces: list[str] = field(default_factory=list)  # empty: cluster-wide
    health_host: str = "0.0.0.0"
    health_port: int = 8080
    leader_election: bool = True
    lease_namespace: str = "default"
    lease_name: str = "loraplex-operator"
    identity: str = ""
    resync_s: float = 60.0
    stats_timeout_s: float = 2.0
    stats_port: int = c.SIDECAR_PORT  # the pods' sidecar port the autoscaler polls
    hub_timeout_s: float = 10.0
    debounce_s: float = 0.5
    max_delay_s: float = 3.0
    autoscale_tick_s: float = 5.0


class Operator:
    def __init__(self, cfg: OperatorConfig, kube: Kube | None = None) -> None:
        self.cfg = cfg
        self.kube = kube or Kube()
        # Our own view of every pool and adapter (kopf watches pools for their change handlers, never adapters).
        # Nothing reads it before the first LIST is in: run() starts the table's marks, the queue, the autoscaler
        # and kopf only then.
        self.pool_store = PoolStore()
        self.adapter_store = AdapterStore()
        self.writer = TableWriter(
            self.kube.lane(4, "table"),
            demand=lambda ns: self.autoscaler.adapter_needs(ns),
            debounce_s=cfg.debounce_s,
            max_delay_s=cfg.max_delay_s,
        )
        self.writer.adapter_source = self.adapter_store.snapshots  # no LIST of every adapter per flush
        self.autoscaler = Autoscaler(
            self.kube,
            poke_pool=lambda ns, n: self.pools.poke(ns, n),
            mark_table=self.writer.mark,
            tick_s=cfg.autoscale_tick_s,
            stats_timeout_s=cfg.stats_timeout_s,
            stats_port=cfg.stats_port,
            adapter_source=self.adapter_store.snapshots,
        )
        self.pools = PoolController(self.kube, self.writer, self.autoscaler)
        self.adapters = AdapterController(self.kube, self.writer, hub_timeout_s=cfg.hub_timeout_s)
        self.adapter_queue = AdapterQueue(self._reconcile_adapter, self._fetch_adapter)
        watch_lane = self.kube.lane(2, "watch")  # a relist never queues behind a burst of status writes
        self.pool_reflector = Reflector(
            watch_lane, c.API_VERSION, c.POOL_PLURAL, cfg.namespaces, self._pool_event, self.pool_store.keys
        )
        self.adapter_reflector = Reflector(
            watch_lane, c.API_VERSION, c.ADAPTER_PLURAL, cfg.namespaces, self._adapter_event, self.adapter_store.keys
        )
        self.registry = build_registry(self)
        self.settings = build_settings()
        self.elector = (
            LeaderElector(self.kube, cfg.lease_namespace, cfg.lease_name, cfg.identity or default_identity())
            if cfg.leader_election
            else None
        )
        self._kopf_task: asyncio.Task[None] | None = None
        self.adapter_events = 0  # LoraAdapter watch events handled (a restart's resume sees one per adapter)
        self._stop = asyncio.Event()

    # -- helpers used by handlers -------------------------------------------

    def _adapter_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        self.adapter_events += 1
        self.adapter_store.apply(event_type, body)
        self.adapter_queue.observe(event_type, body)
        if self.adapter_reflector.listed.is_set():
            # Not while the first LIST is coming in: a flush then would write a table missing the adapters not
            # listed yet (run() marks every namespace once the LIST is in).
            self.writer.mark(object_key(body)[0])

    def _pool_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        """Any pool event marks its table; a deleted pool is forgotten by the autoscaler and the pool controller.

        Adapters are reconciled now rather than after their backoff when what they
        see of a pool changes: a new or changed pool wakes the namespace's waiting
        adapters (Pending, Failed, or an alias conflict), a deleted pool the
        adapters it served, so their status stops saying Ready. Nothing is written
        to wake them.
        """
        namespace, name = object_key(body)
        if self.pool_reflector.listed.is_set():  # run() marks every namespace once the first LIST is in
            self.writer.mark(namespace)
        if event_type == "DELETED":
            self.autoscaler.forget(namespace, name)
            self.pools.invalidate(namespace, name)
        if not self.pool_store.apply(event_type, body):
            return
        if event_type == "DELETED":
            self.adapter_queue.wake_adapters(namespace, self.adapter_store.served_by(namespace, name))
        else:
            self.adapter_queue.wake(namespace)

    async def _reconcile_adapter(self, body: dict[str, Any], attempt: int) -> None:
        namespace = body["metadata"]["namespace"]
        await self.adapters.reconcile(
            body, attempt, self.pool_store.infos(namespace), self.adapter_store.claimants(namespace)
        )

    async def _fetch_adapter(self, namespace: str, name: str) -> dict[str, Any] | None:
        kube = self.kube
        body: dict[str, Any] | None = await kube.run(kube.get, c.API_VERSION, c.ADAPTER_PLURAL, namespace, name)
        return body

    def health(self) -> dict[str, Any]:
        role = "leader" if (self.elector is None or self.elector.is_leader) else "standby"
        dead = self._kopf_task is not None and self._kopf_task.done()
        return {
            "ok": not dead,
            "role": role,
            "kopf": "stopped" if dead else "running" if self._kopf_task else "waiting",
            "tableWrites": self.writer.stats.writes,
            "tableFlushes": self.writer.stats.flushes,
            "adapterEvents": self.adapter_events,
            "adapters": len(self.adapter_store),
            "adapterLists": self.adapter_reflector.lists,
            "adapterQueue": self.adapter_queue.stats(),
            "apiRequests": dict(self.kube.requests_by_verb),
        }

    # -- lifecycle ------------------------------------------------------------

    async def wait_for_crds(self) -> bool:
        """kopf's resource scanning is off (least privilege): make sure our kinds are served first."""
        while not self._stop.is_set():
            try:
                doc = await self.kube.run(self.kube.request, "GET", f"/apis/{c.API_VERSION}")
                served = {r.get("name") for r in (doc or {}).get("resources", [])}
                if {c.POOL_PLURAL, c.ADAPTER_PLURAL} <= served:
                    return True
            except KubeError as e:
                if e.status != 404:
                    log.warning("checking for the loraplex.io CRDs: %s", e)
            log.info("waiting for the loraplex.io/%s CRDs to be installed", c.VERSION)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 5)
        return False

    async def _until_listed(self, stop: asyncio.Event) -> bool:
        """Wait for the first LIST of pools and adapters (or a stop): reconciles and tables need the whole view."""
        reflectors = (self.pool_reflector, self.adapter_reflector)
        listed: asyncio.Future[Any] = asyncio.gather(*(r.listed.wait() for r in reflectors))
        stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait({listed, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not listed.done():
            listed.cancel()
            return False
        log.info("listed %d pool(s) and %d adapter(s)", len(self.pool_store), len(self.adapter_store))
        return True

    async def resync(self) -> None:
        """Periodic full pass: re-check every pool and rewrite any table someone edited."""
        while True:
            await asyncio.sleep(self.cfg.resync_s)
            for ns in self.writer.namespaces():
                self.writer.mark(ns)
            for ns, name in self.autoscaler.tracked():
                self.pools.poke(ns, name)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        registry = metrics_registry(self)
        health = HealthServer(self.cfg.health_host, self.cfg.health_port, self.health, lambda: exposition(registry))
        await health.start()
        background: list[asyncio.Task[Any]] = []
        lost = asyncio.Event()
        code = 0
        try:
            if self.elector is not None:
                waiter = asyncio.create_task(self.elector.acquire())
                stopper = asyncio.create_task(self._stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not waiter.done():
                    waiter.cancel()
                    return 0
                background.append(asyncio.create_task(self.elector.keep(lost.set)))
            if not await self.wait_for_crds():
                return 0
            stop_flag = asyncio.Event()  # our stop, or the lease lost
            background.append(asyncio.create_task(_relay(lost, stop_flag)))
            background.append(asyncio.create_task(_relay(self._stop, stop_flag)))
            background.append(asyncio.create_task(self.pool_reflector.run()))
            background.append(asyncio.create_task(self.adapter_reflector.run()))
            if not await self._until_listed(stop_flag):
                return 1 if lost.is_set() else 0
            # Every namespace's table once, from the complete view (a table edited while we were away, or stale).
            for namespace in {ns for ns, _ in (*self.adapter_store.keys(), *self.pool_store.keys())}:
                self.writer.mark(namespace)
            # kopf takes over SIGTERM/SIGINT from here on; our stop flag covers lease loss.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            background.append(asyncio.create_task(self.autoscaler.run()))
            background.append(asyncio.create_task(self.adapter_queue.run()))
            background.append(asyncio.create_task(self.resync()))
            self._kopf_task = asyncio.create_task(
                kopf.operator(
                    registry=self.registry,
                    settings=self.settings,
                    standalone=True,
                    clusterwide=not self.cfg.namespaces,
                    namespaces=self.cfg.namespaces,
                    stop_flag=stop_flag,
                )
            )
            await self._kopf_task
            if lost.is_set():
                log.error("lost the leader lease; exiting so that a restart rejoins as a follower")
                code = 1
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self.elector is not None and not lost.is_set():
                await self.elector.release()
            await health.stop()
            self.kube.close()
        return code


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
