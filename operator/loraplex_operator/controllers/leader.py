"""Leader election on a coordination.k8s.io Lease, so several replicas run safely.

Only the leader runs kopf and the background loops; the others wait. The
decision is a pure function (`lease_action`) and, like client-go, judges
expiry by how long *this* process has seen the record unchanged, so clocks
that disagree between nodes cannot split the brain. A restarted process with
the same identity (a container restart keeps the pod name) takes its lease
back at once. Losing the lease stops the operator; the pod restarts as a
follower.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loraplex_operator.clients.kube import Kube, KubeError, resource_path

log = logging.getLogger(__name__)
LEASE_API = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration_s: int
    renew_time: str
    transitions: int


def record_of(lease: dict[str, Any] | None) -> LeaseRecord | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return LeaseRecord(
        spec.get("holderIdentity") or "",
        int(spec.get("leaseDurationSeconds") or 15),
        spec.get("renewTime") or "",
        int(spec.get("leaseTransitions") or 0),
    )


def lease_action(record: LeaseRecord | None, identity: str, unchanged_for_s: float) -> str:
    """create | renew (ours) | acquire (free or expired) | wait (someone else's, live)."""
    if record is None:
        return "create"
    if record.holder == identity:
        return "renew"
    if not record.holder or unchanged_for_s >= record.duration_s:
        return "acquire"
    return "wait"


def micro_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        duration_s: int = 15,
        retry_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = duration_s
        self.retry_s = retry_s
        self.clock = clock
        self.is_leader = False
        self._seen: tuple[LeaseRecord | None, float] = (None, clock())

    def _lease(self, lease: dict[str, Any] | None, transitions: int, acquire: bool) -> dict[str, Any]:
        now = micro_time(time.time())
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = now
        body: dict[str, Any] = {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        if lease is not None:
            # Optimistic concurrency: a competing writer makes this fail with 409.
            body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
            body["spec"] = {**(lease.get("spec") or {}), **spec}
        return body

    def try_once(self) -> bool:
        """One election round (blocking). True when we hold the lease afterwards."""
        lease = self.kube.get(LEASE_API, "leases", self.namespace, self.name)
        record = record_of(lease)
        now = self.clock()
        if record != self._seen[0]:
            self._seen = (record, now)
        action = lease_action(record, self.identity, now - self._seen[1])
        try:
            if action == "create":
                self.kube.create(self._lease(None, 0, acquire=True))
            elif action == "renew":
                self.kube.replace(self._lease(lease, record.transitions if record else 0, acquire=False))
            elif action == "acquire":
                log.info(
                    "leader election: taking over lease %s/%s from %r",
                    self.namespace,
                    self.name,
                    record.holder if record else "",
                )
                self.kube.replace(self._lease(lease, (record.transitions if record else 0) + 1, acquire=True))
            else:
                return False
        except KubeError as e:
            if e.status in (409, 422):
                return False  # someone else won this round
            raise
        return True

    async def acquire(self) -> None:
        while True:
            try:
                if await self.kube.run(self.try_once):
                    self.is_leader = True
                    log.info(
                        "leader election: %s is the leader (lease %s/%s)", self.identity, self.namespace, self.name
                    )
                    return
            except KubeError as e:
                log.warning("leader election: %s", e)
            await asyncio.sleep(self.retry_s)

    async def keep(self, lost: Callable[[], None]) -> None:
        """Renew every third of the lease; call `lost` once renewing fails for too long."""
        last_ok = self.clock()
        while True:
            await asyncio.sleep(self.duration_s / 3)
            try:
                if await self.kube.run(self.try_once):
                    last_ok = self.clock()
                    continue
                log.error("leader election: lease %s/%s taken by another holder", self.namespace, self.name)
            except KubeError as e:
                log.warning("leader election: renew failed: %s", e)
                if self.clock() - last_ok < self.duration_s * 2 / 3:
                    continue
            self.is_leader = False
            lost()
            return

    async def release(self) -> None:
        """Hand the lease over at once on a clean shutdown (followers need not wait it out)."""
        if not self.is_leader:
            return
        try:
            lease = await self.kube.run(self.kube.get, LEASE_API, "leases", self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await self.kube.run(
                    self.kube.request, "PUT", resource_path(LEASE_API, "leases", self.namespace, self.name), lease
                )
        except KubeError as e:
            log.warning("leader election: release failed: %s", e)
        self.is_leader = False
