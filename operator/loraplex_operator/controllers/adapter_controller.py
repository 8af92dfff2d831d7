"""LoraAdapter reconcile (I/O around the pure resolution and metadata checks).

Resolves the pool (by reference or base model), checks the adapter's names
against the namespace, and for a hub source reads the repo metadata and pins
the revision to a commit. The outcome is the adapter's status; the table
writer routes it from there. Anything short of Ready raises `Retry` with an
exponential backoff: the caller (the AdapterQueue) reschedules, so a missing
pool, an unreachable hub or a conflicting alias heals without a crash loop.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loraplex_operator import constants as c
from loraplex_operator.clients.hub import HubError, fetch_model_info
from loraplex_operator.clients.kube import Kube, KubeError
from loraplex_operator.controllers.events import post_failure_event
from loraplex_operator.controllers.table_writer import TableWriter
from loraplex_operator.logic.backoff import retry_delay
from loraplex_operator.logic.conditions import Condition, merge_conditions, status_changed
from loraplex_operator.logic.hubmeta import check_hub_metadata
from loraplex_operator.logic.resolution import (
    Claimant,
    PoolInfo,
    name_problem,
    pool_claims,
    resolve_pool,
    sanitize_pools,
)
from loraplex_operator.logic.sources import REASON as SOURCE_REFUSED
from loraplex_operator.logic.sources import source_problem
from loraplex_operator.logic.specs import AdapterSpec, SpecError, parse_adapter_spec

log = logging.getLogger(__name__)


class Retry(Exception):
    """Not Ready yet: try again after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class Outcome:
    phase: str  # Pending | Ready | Failed
    reason: str
    message: str
    pool: str | None = None
    fields: Mapping[str, Any] | None = None  # extra status fields (resolvedRevision, sha256, ...)
    # An alias another adapter or a pool holds: the adapter is still routed (by its name and its other
    # aliases, exactly as logic/routes.py builds the table), and this says which alias is not.
    alias_conflict: str = ""


def adapter_conditions(outcome: Outcome) -> list[Condition]:
    ready = outcome.phase == "Ready"
    return [
        Condition(
            "Ready",
            ready,
            "Routed" if ready else outcome.reason,
            outcome.message if not ready else f"routed to pool {outcome.pool}",
        ),
        Condition(
            "Progressing",
            outcome.phase == "Pending",
            outcome.reason if outcome.phase == "Pending" else "Resolved" if ready else "Stopped",
            outcome.message if outcome.phase == "Pending" else "",
        ),
        Condition(
            "Degraded",
            outcome.phase == "Failed",
            outcome.reason if outcome.phase == "Failed" else "AsExpected",
            outcome.message if outcome.phase == "Failed" else "",
        ),
    ] + ([Condition("AliasConflict", True, "AliasConflict", outcome.alias_conflict)] if outcome.alias_conflict else [])


def adapter_status(outcome: Outcome, old_status: dict[str, Any] | None, generation: int, now: float) -> dict[str, Any]:
    old_status = old_status or {}
    status: dict[str, Any] = {
        "phase": outcome.phase,
        "pool": outcome.pool or "",
        "observedGeneration": generation,
        "conditions": merge_conditions(old_status.get("conditions"), adapter_conditions(outcome), now, generation),
    }
    status.update(outcome.fields or {})
    return status


class AdapterController:
    def __init__(
        self,
        kube: Kube,
        writer: TableWriter,
        clock: Callable[[], float] = time.time,
        hub_timeout_s: float = 10.0,
        fetch: Callable[..., Any] = fetch_model_info,
    ) -> None:
        self.kube = kube
        self.writer = writer
        self.clock = clock
        self.hub_timeout_s = hub_timeout_s
        self.fetch = fetch
        self.reconciles = 0

    async def reconcile(
        self, body: dict[str, Any], retry: int, pools: Iterable[PoolInfo], claimants: Mapping[str, Iterable[Claimant]]
    ) -> Outcome:
        """Resolve one adapter and write its status. Raises Retry unless Ready."""
        self.reconciles += 1
        meta = body["metadata"]
        namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 0)
        outcome = await self._resolve(body, list(pools), claimants)
        old_status = copy.deepcopy(body.get("status"))
        status = adapter_status(outcome, old_status, generation, self.clock())
        if status_changed(old_status, status):
            try:
                await self.kube.run(
                    self.kube.merge_patch,
                    c.API_VERSION,
                    c.ADAPTER_PLURAL,
                    namespace,
                    name,
                    {"status": status},
                    "status",
                )
            except KubeError as e:
                if e.status == 404:
                    return outcome  # deleted meanwhile
                raise
            # The caller's copy now says what was written: a reconcile of the same body before the watch event
            # brings the new status (a wake, an edit) compares with it instead of writing the same status again.
            body["status"] = status
            await post_failure_event(self.kube, body, c.ADAPTER_KIND, old_status, status)
        self.writer.mark(namespace)
        if outcome.phase != "Ready" or outcome.alias_conflict:
            # Failed needs a spec change, but retry slowly anyway: a fixed hub
            # card, a new pool or a freed alias is then picked up by itself
            # (a Ready adapter that lost an alias too: its condition clears then).
            base = 5.0 if outcome.phase == "Pending" else 30.0
            message = outcome.alias_conflict if outcome.phase == "Ready" else outcome.message
            raise Retry(
                f"{outcome.reason if outcome.phase != 'Ready' else 'AliasConflict'}: {message}",
                retry_delay(retry, base_s=base),
            )
        return outcome

    async def _resolve(
        self, body: dict[str, Any], pools: list[PoolInfo], claimants: Mapping[str, Iterable[Claimant]]
    ) -> Outcome:
        meta = body["metadata"]
        try:
            spec = parse_adapter_spec(body.get("spec"))
        except SpecError as e:
            return Outcome("Failed", "InvalidSpec", str(e))
        infos = {p.name: p for p in sanitize_pools(pools)}
        res = resolve_pool(spec, infos)
        if res.pool is None:
            return Outcome(res.phase if res.phase != "Ready" else "Pending", res.reason, res.message)
        pool_owner: dict[str, str] = {}
        for p in sorted(infos.values(), key=lambda p: p.name):
            for n in pool_claims(p):
                pool_owner.setdefault(n, p.name)  # same precedence as assign_names
        problem = name_problem(meta["name"], spec.aliases, pool_owner, claimants)
        if problem is not None and problem[0] == "AliasConflict":
            # Routed anyway, by its own name (routes.build_table drops only the alias): Ready says so.
            outcome = await self._resolve_source(body, spec, infos, res.pool)
            return dataclasses.replace(outcome, alias_conflict=problem[1])
        if problem is not None:
            phase = "Failed" if problem[0] == "InvalidName" else "Pending"
            return Outcome(phase, problem[0], problem[1], res.pool)
        return await self._resolve_source(body, spec, infos, res.pool)

    async def _resolve_source(
        self, body: dict[str, Any], spec: AdapterSpec, infos: Mapping[str, PoolInfo], pool: str
    ) -> Outcome:
        src = spec.source
        info = infos[pool]
        refused = source_problem(src, info.allow_private_urls, info.path_roots)
        if refused is not None:
            return Outcome("Failed", SOURCE_REFUSED, refused, pool)
        if src.type == "url":
            if not src.url or not src.sha256:
                return Outcome("Failed", "InvalidSource", "a url source needs url and sha256", pool)
            return Outcome(
                "Ready",
                "Routed",
                "",
                pool,
                {"resolvedRevision": src.sha256, "sha256": src.sha256, "format": "safetensors"},
            )
        if src.type == "path":
            if not src.path:
                return Outcome("Failed", "InvalidSource", "a path source needs path", pool)
            return Outcome("Ready", "Routed", "", pool, {"resolvedRevision": "", "format": "safetensors"})
        return await self._resolve_hub(body, spec, infos[pool], pool)

    async def _resolve_hub(self, body: dict[str, Any], spec: AdapterSpec, pool: PoolInfo, pool_name: str) -> Outcome:
        meta, status = body["metadata"], body.get("status") or {}
        src = spec.source
        if not src.repo:
            return Outcome("Failed", "InvalidSource", "a hub source needs repo", pool_name)
        # Already pinned for this very spec and pool: no hub call (restarts stay offline-safe).
        if (
            status.get("resolvedGeneration") == meta.get("generation")
            and status.get("resolvedRevision")
            and status.get("pool") == pool_name
        ):
            return Outcome(
                "Ready",
                "Routed",
                "",
                pool_name,
                {
                    k: status[k]
                    for k in ("resolvedRevision", "resolvedFilename", "resolvedGeneration", "size", "format")
                    if k in status
                },
            )
        token = await self._token(meta["namespace"], spec, pool_name)
        try:
            info = await self.kube.run(self.fetch, src.repo, src.revision, token, self.hub_timeout_s)
        except HubError as e:
            return Outcome("Pending" if e.retryable else "Failed", e.reason, e.message, pool_name)
        check = check_hub_metadata(info, [pool.base_model, *pool.aliases], src.filename, pool_family=pool.family)
        if not check.ok:
            return Outcome("Failed", check.reason, check.message, pool_name)
        fields: dict[str, Any] = {
            "resolvedRevision": check.commit,
            "resolvedFilename": check.filename,
            "resolvedGeneration": meta.get("generation"),
            "format": "safetensors",
        }
        if check.size is not None:
            fields["size"] = check.size
        return Outcome("Ready", "Routed", "", pool_name, fields)

    async def _token(self, namespace: str, spec: AdapterSpec, pool_name: str) -> str | None:
        ref = spec.source.token_secret
        if ref is None:
            pool = await self.kube.run(self.kube.get, c.API_VERSION, c.POOL_PLURAL, namespace, pool_name)
            secret_ref = ((pool or {}).get("spec") or {}).get("hubTokenSecret")
            if not secret_ref:
                return None
            name, key = secret_ref.get("name"), secret_ref.get("key", "token")
        else:
            name, key = ref.name, ref.key
        try:
            secret = await self.kube.run(self.kube.get, "v1", "secrets", namespace, name)
        except KubeError as e:
            log.warning("cannot read hub token secret %s/%s: %s", namespace, name, e)
            return None
        value = ((secret or {}).get("data") or {}).get(key)
        return base64.b64decode(value).decode().strip() if value else None
