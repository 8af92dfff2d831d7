"""The routing table of one namespace, built from its pools, adapters and pods. Pure.

A pure function of the objects as the API returns them: any writer, after
any restart, computes the same table from the same cluster state. Adapters
with url and path sources are routed as soon as their spec resolves to a
pool; hub adapters once the operator has pinned their revision to a commit
for the current spec generation (recorded in their status).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loraplex.api.routing_table import (
    AdapterEntry,
    Endpoint,
    HubSource,
    PathSource,
    PoolEntry,
    RoutingTable,
    UrlSource,
)
from loraplex_operator import constants as c
from loraplex_operator.logic.families import pool_family
from loraplex_operator.logic.podstate import ReadyPod
from loraplex_operator.logic.resolution import PoolInfo, assign_names, resolve_pool, sanitize_pools
from loraplex_operator.logic.sizing import adapter_replication
from loraplex_operator.logic.sources import source_problem
from loraplex_operator.logic.specs import AdapterSpec, PoolSpec, SpecError, parse_adapter_spec, parse_pool_spec


@dataclass(frozen=True)
class TableBuild:
    table: RoutingTable
    routed: Mapping[str, str]  # adapter -> pool
    problems: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # adapter -> (reason, message)


def pool_info(name: str, spec: PoolSpec) -> PoolInfo:
    return PoolInfo(
        name,
        spec.model.name,
        tuple(spec.routing.aliases),
        spec.adapter_sources.allow_private_urls,
        tuple(spec.adapter_sources.path_roots),
        pool_family(spec.model.name, spec.model.pipeline),
    )


def parse_pools(pools: Sequence[dict[str, Any]]) -> dict[str, tuple[PoolSpec, dict[str, Any]]]:
    out = {}
    for body in pools:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue  # being deleted: stop routing to it now
        try:
            out[body["metadata"]["name"]] = (parse_pool_spec(body.get("spec")), body)
        except SpecError:
            continue  # the pool's own status reports it
    return out


def hub_source_ready(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    return bool(status.get("resolvedRevision")) and status.get("resolvedGeneration") == (
        body.get("metadata") or {}
    ).get("generation")


def _source(spec: AdapterSpec, body: dict[str, Any], pool_spec: PoolSpec) -> tuple[Any, str] | None:
    src = spec.source
    policy = pool_spec.adapter_sources
    if source_problem(src, policy.allow_private_urls, policy.path_roots) is not None:
        return None  # refused at admission: the adapter's status says why
    if src.type == "url":
        if not src.url or not src.sha256:
            return None
        return UrlSource(url=src.url, sha256=src.sha256), src.sha256
    if src.type == "path":
        if not src.path:
            return None
        return PathSource(path=src.path), ""
    if not src.repo or not hub_source_ready(body):
        return None
    status = body.get("status") or {}
    commit = status["resolvedRevision"]
    # The worker has the pool's hub token (HF_TOKEN) and nothing else.
    token_env = "HF_TOKEN" if pool_spec.hub_token_secret is not None else None
    return HubSource(
        repo=src.repo, revision=commit, filename=status.get("resolvedFilename") or src.filename, token_env=token_env
    ), commit


def endpoint_url(ip: str, port: int = c.SIDECAR_PORT) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


class BuildMemo:
    """What `build_table` worked out per adapter last time, reused while the adapter's body is the same object.

    The operator's adapter bodies come from kopf's index, where an unchanged
    adapter keeps the very same snapshot dict between flushes (a change
    replaces it), so object identity says "unchanged" for free. At 30,000
    adapters this turns a flush's per-adapter work (spec parsing, the
    source's URL checks, pydantic models) from seconds into a dict lookup.
    Bodies from a LIST are new objects each time: nothing is reused, and the
    result is the same either way. Holds only the last build's adapters.
    """

    def __init__(self) -> None:
        self.sources: dict[str, tuple[Any, tuple[Any, ...], Any]] = {}  # name -> (body, pool key, (spec, source))
        self.entries: dict[str, tuple[tuple[Any, ...], AdapterEntry]] = {}  # name -> (inputs, entry)
        self.hits = 0


def _pool_key(name: str, spec: PoolSpec) -> tuple[Any, ...]:
    """What of the adapter's pool `_source` depends on."""
    policy = spec.adapter_sources
    return (name, policy.allow_private_urls, tuple(policy.path_roots), spec.hub_token_secret is not None)


def build_table(
    pools: Sequence[dict[str, Any]],
    adapters: Sequence[dict[str, Any]],
    ready_pods: Mapping[str, Sequence[ReadyPod]],
    demand: Mapping[str, int] | None = None,
    memo: BuildMemo | None = None,
) -> TableBuild:
    """Routing table for one namespace. `demand`: home pods each adapter's own load needs (autoscaler).

    `memo` (optional) makes a rebuild cheap when few adapters changed; the table is the same without it.
    """
    demand = demand or {}
    sources: dict[str, tuple[Any, tuple[Any, ...], Any]] = {}
    old_sources = memo.sources if memo is not None else {}
    parsed_pools = parse_pools(pools)
    infos = {p.name: p for p in sanitize_pools(pool_info(n, s) for n, (s, _) in parsed_pools.items())}

    pool_entries = {}
    for name, info in infos.items():
        pool_spec = parsed_pools[name][0]
        pool_entries[name] = PoolEntry(
            base_model=pool_spec.model.name,
            aliases=info.aliases,
            endpoints=tuple(
                Endpoint(name=p.name, url=endpoint_url(p.ip))
                for p in sorted(ready_pods.get(name, ()), key=lambda p: p.name)
            ),
            load_bound=pool_spec.routing.load_bound,
            activation_timeout_s=pool_spec.routing.activation_timeout_seconds,
            policy=pool_spec.routing.policy,
            idle_probes=pool_spec.routing.idle_probes,
            open_catalog=pool_spec.open_catalog.enabled,
        )

    candidates: dict[str, tuple[AdapterSpec, str, Any, str]] = {}
    problems: dict[str, tuple[str, str]] = {}
    for body in adapters:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if meta.get("deletionTimestamp"):
            continue
        cached_spec = old_sources.get(name)
        try:
            spec = (
                cached_spec[2][0]
                if cached_spec is not None and cached_spec[0] is body
                else parse_adapter_spec(body.get("spec"))
            )
        except SpecError as e:
            problems[name] = ("InvalidSpec", str(e))
            continue
        res = resolve_pool(spec, infos)
        if res.pool is None:
            problems[name] = (res.reason, res.message)
            continue
        pool_key = _pool_key(res.pool, parsed_pools[res.pool][0])
        cached = old_sources.get(name)
        if cached is not None and cached[0] is body and cached[1] == pool_key:
            spec, source = cached[2]
        else:
            source = _source(spec, body, parsed_pools[res.pool][0])
        sources[name] = (body, pool_key, (spec, source))
        if source is None:
            continue  # hub revision not pinned yet: the adapter's status says why
        candidates[name] = (spec, res.pool, source[0], source[1])

    names = assign_names(infos.values(), {n: spec.aliases for n, (spec, *_rest) in candidates.items()})
    problems.update(names.problems)
    entries = {}
    memo_entries: dict[str, tuple[tuple[Any, ...], AdapterEntry]] = {}
    old_entries = memo.entries if memo is not None else {}
    for name in sorted(names.routed):
        spec, pool, source, revision = candidates[name]
        homes = adapter_replication(demand.get(name, 0), spec.min_replicas, spec.max_replicas)
        inputs = (spec, pool, source, revision, names.aliases[name], homes)
        old = old_entries.get(name)
        if old is not None and old[0][0] is spec and old[0][1:] == inputs[1:]:
            entry = old[1]
            if memo is not None:
                memo.hits += 1
        else:
            entry = AdapterEntry(
                pool=pool,
                source=source,
                aliases=names.aliases[name],
                scale=spec.scale,
                replication=homes,
                pinned=spec.pinned,
                revision=revision,
            )
        entries[name] = entry
        memo_entries[name] = (inputs, entry)
    if memo is not None:
        memo.sources, memo.entries = sources, memo_entries
    # The entries are validated models already: the table checks only the whole (names, pools).
    table = RoutingTable(pools=pool_entries, adapters=entries)
    return TableBuild(table, {n: e.pool for n, e in entries.items()}, problems)
