"""BaseModelPool reconcile (I/O around the pure builders).

`reconcile(namespace, name)` is the one entry point for every trigger: kopf
create/update/resume handlers, pod and Deployment events (debounced pokes),
the autoscaler and the periodic resync. It reads the pool, applies the
owned objects (server-side apply; skipped when the manifest is unchanged
since the last apply, re-applied on resync to undo drift), observes the
Deployment and pods, and writes the status only if it changed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, KubeError
from loraplex_operator.controllers.autoscaler import Autoscaler
from loraplex_operator.controllers.events import post_failure_event
from loraplex_operator.controllers.table_writer import TableWriter
from loraplex_operator.logic.conditions import Condition, merge_conditions, status_changed
from loraplex_operator.logic.manifests import (
    applied_digest,
    build_hop_key_secret,
    build_pool_objects,
    manifest_digest,
    selector_string,
)
from loraplex_operator.logic.podstate import summarize_pods
from loraplex_operator.logic.poolstatus import PoolObservation, pool_status
from loraplex_operator.logic.specs import SpecError, parse_pool_spec

log = logging.getLogger(__name__)


class PoolController:
    def __init__(
        self,
        kube: Kube,
        writer: TableWriter,
        autoscaler: Autoscaler,
        clock: Callable[[], float] = time.time,
        reapply_s: float = 300.0,
        poke_delay_s: float = 0.5,
    ) -> None:
        self.kube = kube
        self.writer = writer
        self.autoscaler = autoscaler
        self.clock = clock
        self.reapply_s = reapply_s
        self.poke_delay_s = poke_delay_s
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._applied: dict[tuple[str, str, str], tuple[str, float]] = {}  # (ns, kind, name) -> (hash, when)
        self._hop_keys: dict[str, float] = {}  # namespace -> when its hop key Secret was last seen
        self._pokes: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.reconciles = 0

    # -- triggers ----------------------------------------------------------

    def poke(self, namespace: str, name: str) -> None:
        """Reconcile soon; many pokes within `poke_delay_s` become one reconcile."""
        key = (namespace, name)
        task = self._pokes.get(key)
        if task is not None and not task.done():
            return
        self._pokes[key] = asyncio.get_running_loop().create_task(self._poked(namespace, name))

    async def _poked(self, namespace: str, name: str) -> None:
        await asyncio.sleep(self.poke_delay_s)
        self._pokes.pop((namespace, name), None)
        try:
            await self.reconcile(namespace, name)
        except Exception:  # noqa: BLE001 - next event or resync retries
            log.exception("reconcile of pool %s/%s failed", namespace, name)

    def invalidate(self, namespace: str, name: str) -> None:
        """An owned object changed under us (e.g. deleted): re-apply on the next reconcile."""
        for key in [k for k in self._applied if k[0] == namespace and k[2] == name]:
            del self._applied[key]

    # -- the reconcile -----------------------------------------------------

    async def reconcile(self, namespace: str, name: str, force_apply: bool = False) -> None:
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            self.reconciles += 1
            await self._reconcile(namespace, name, force_apply)

    async def _reconcile(self, namespace: str, name: str, force_apply: bool) -> None:
        kube = self.kube
        body = await kube.run(kube.get, c.API_VERSION, c.POOL_PLURAL, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            # Owned objects go with it (owner references); only memory and routes are ours to drop.
            self.autoscaler.forget(namespace, name)
            self.invalidate(namespace, name)
            self.writer.mark(namespace)
            return
        generation = body["metadata"].get("generation", 0)
        old_status = body.get("status") or {}
        try:
            spec = parse_pool_spec(body.get("spec"))
        except SpecError as e:
            await self._write_status(
                body,
                {
                    "observedGeneration": generation,
                    "conditions": merge_conditions(
                        old_status.get("conditions"),
                        [
                            Condition("Ready", False, "InvalidSpec", str(e)),
                            Condition("Progressing", False, "InvalidSpec", str(e)),
                            Condition("Degraded", True, "InvalidSpec", str(e)),
                        ],
                        self.clock(),
                        generation,
                    ),
                },
            )
            return

        # The CRD's CEL rules keep replicas within bounds; clamp anyway for
        # objects written before a rule existed.
        replicas = max(spec.min_replicas, min(spec.max_replicas, spec.replicas))
        apply_error = await self._apply_all(namespace, name, body, spec, replicas, force_apply)

        deployment, pods = await asyncio.gather(
            kube.run(kube.get, "apps/v1", "deployments", namespace, name),
            kube.run(kube.list, "v1", "pods", namespace, selector_string(name)),
        )
        load = self.autoscaler.pool_load(namespace, name)
        obs = PoolObservation(
            generation=generation,
            desired=replicas,
            selector=selector_string(name),
            deployment=deployment,
            pods=summarize_pods(pods),
            apply_error=apply_error,
            request_rate=load.request_rate if load else None,
            mean_service_seconds=load.mean_service_s if load else None,
        )
        await self._write_status(body, pool_status(obs, old_status, self.clock()))
        self.autoscaler.track(namespace, name, spec, replicas)
        self.writer.mark(namespace)  # endpoints or the pool entry may have changed

    async def _ensure_hop_key(self, namespace: str, force: bool) -> str | None:
        """Create the namespace's hop key once; never rewrite it (pods would lose each other)."""
        now = self.clock()
        seen = self._hop_keys.get(namespace)
        if not force and seen is not None and now - seen < self.reapply_s:
            return None
        try:
            found = await self.kube.run(self.kube.get, "v1", "secrets", namespace, c.HOP_KEY_SECRET)
            if found is None:
                manifest = build_hop_key_secret(namespace, secrets.token_hex(32))
                try:
                    await self.kube.run(self.kube.create, manifest)
                    log.info("namespace %s: created the hop key Secret %s", namespace, c.HOP_KEY_SECRET)
                except KubeError as e:
                    if e.status != 409:  # another replica or a restart made it first: keep theirs
                        raise
        except KubeError as e:
            self._hop_keys.pop(namespace, None)
            return f"cannot create Secret {c.HOP_KEY_SECRET}: {e}"
        self._hop_keys[namespace] = now
        return None

    async def _apply_all(
        self, namespace: str, name: str, body: dict[str, Any], spec: Any, replicas: int, force: bool
    ) -> str | None:
        key_error = await self._ensure_hop_key(namespace, force)
        if key_error:
            return key_error
        now = self.clock()
        for manifest in build_pool_objects(body, spec, replicas):
            key = (namespace, manifest["kind"], name)
            digest = manifest_digest(manifest)
            last = self._applied.get(key)
            if not force and last and last[0] == digest and now - last[1] < self.reapply_s:
                continue
            try:
                # First sight since this operator started: the live object may already be what we would
                # write (a restart, a new leader). A read instead of a write; drift is still repaired by
                # the periodic re-apply.
                if (
                    not force
                    and last is None
                    and applied_digest(await self.kube.run(self.kube.get_manifest, manifest)) == digest
                ):
                    self._applied[key] = (digest, now)
                    continue
                await self.kube.run(self.kube.apply, manifest)
            except KubeError as e:
                self._applied.pop(key, None)
                level = logging.DEBUG if "being terminated" in e.message else logging.WARNING
                log.log(level, "pool %s/%s: cannot apply %s: %s", namespace, name, manifest["kind"], e)
                return f"cannot apply {manifest['kind']} {manifest['metadata']['name']}: {e}"
            self._applied[key] = (digest, now)
        return None

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        old_status = copy.deepcopy(body.get("status"))
        if not status_changed(old_status, status):
            return
        meta = body["metadata"]
        try:
            await self.kube.run(
                self.kube.merge_patch,
                c.API_VERSION,
                c.POOL_PLURAL,
                meta["namespace"],
                meta["name"],
                {"status": status},
                "status",
            )
        except KubeError as e:
            if e.status != 404:
                raise
            return
        await post_failure_event(self.kube, body, c.POOL_KIND, old_status, status)
