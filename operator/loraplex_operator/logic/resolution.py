"""Which pool serves an adapter, and which names it may be called by. Pure.

Both the adapter reconcile (for its status) and the routing-table builder
(for the table) call these, so what an adapter's status says and what the
table contains cannot disagree.

Name rules, deterministic and independent of event order:
- pool names, aliases and base model names are claimed first;
- then adapter names (unique per namespace, as Kubernetes names are);
  an adapter whose name a pool already holds is not routed at all;
- then adapter aliases, adapters in name order; an alias already taken is
  dropped from the table and reported on that adapter: it stays routed by
  its own name and its other aliases, so its status is Ready, with a
  separate `AliasConflict` condition naming the alias it lost.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from loraplex.families import normalize_model
from loraplex_operator.logic.specs import AdapterSpec

_ADAPTER_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$")


@dataclass(frozen=True)
class PoolInfo:
    name: str
    base_model: str
    aliases: tuple[str, ...] = ()
    # spec.adapterSources: which sources the pool admits (logic/sources.py)
    allow_private_urls: bool = False
    path_roots: tuple[str, ...] = ("/models/loras",)
    family: str | None = None  # "sdxl", "flux", or None when neither declared nor a known base id


@dataclass(frozen=True)
class Resolution:
    pool: str | None
    reason: str
    message: str
    # Pending: may resolve by itself later (pool created); Failed: needs a spec change.
    phase: str = "Pending"


def sanitize_pools(pools: Iterable[PoolInfo]) -> list[PoolInfo]:
    """Pools in name order, each alias kept only by the first pool to claim it."""
    taken: set[str] = set()
    ordered = sorted(pools, key=lambda p: p.name)
    taken.update(p.name for p in ordered)
    out = []
    for pool in ordered:
        keep = []
        for alias in pool.aliases:
            if alias and alias not in taken:
                taken.add(alias)
                keep.append(alias)
        out.append(dataclasses.replace(pool, aliases=tuple(keep)))
    return out


def resolve_pool(spec: AdapterSpec, pools: Mapping[str, PoolInfo]) -> Resolution:
    if spec.pool:
        pool = pools.get(spec.pool)
        if pool is None:
            return Resolution(None, "PoolNotFound", f"BaseModelPool {spec.pool!r} does not exist in this namespace")
        if spec.base_model and normalize_model(spec.base_model) not in _model_names(pool):
            return Resolution(
                None,
                "BaseModelMismatch",
                f"adapter expects base model {spec.base_model!r} but pool {pool.name!r} serves {pool.base_model!r}",
                phase="Failed",
            )
        return Resolution(pool.name, "PoolResolved", f"served by pool {pool.name!r}", phase="Ready")
    if spec.base_model:
        want = normalize_model(spec.base_model)
        matches = sorted(p.name for p in pools.values() if want in _model_names(p))
        if not matches:
            return Resolution(
                None, "NoPoolForBaseModel", f"no BaseModelPool in this namespace serves base model {spec.base_model!r}"
            )
        extra = f" (also matches {', '.join(matches[1:])}; set spec.pool to choose)" if len(matches) > 1 else ""
        return Resolution(matches[0], "PoolResolved", f"served by pool {matches[0]!r}{extra}", phase="Ready")
    return Resolution(None, "NoPool", "spec.pool or spec.baseModel is required", phase="Failed")


def _model_names(pool: PoolInfo) -> set[str]:
    return {normalize_model(pool.base_model), *(normalize_model(a) for a in pool.aliases)}


@dataclass(frozen=True)
class NameAssignment:
    routed: frozenset[str]  # adapters that get a table entry
    aliases: Mapping[str, tuple[str, ...]]  # adapter -> aliases it keeps
    problems: Mapping[str, tuple[str, str]]  # adapter -> (reason, message)


def assign_names(pools: Iterable[PoolInfo], adapters: Mapping[str, tuple[str, ...]]) -> NameAssignment:
    """Apply the name rules to pools and {adapter name: aliases}."""
    owner: dict[str, str] = {}
    for pool in sorted(pools, key=lambda p: p.name):
        for n in pool_claims(pool):
            owner.setdefault(n, f"pool {pool.name}")
    routed: set[str] = set()
    problems: dict[str, tuple[str, str]] = {}
    for name in sorted(adapters):
        if not _ADAPTER_NAME_RE.match(name):
            problems[name] = (
                "InvalidName",
                f"name {name!r} is not a valid model name (lowercase letters, digits, '.', '_', '-', at most 128)",
            )
        elif name in owner:
            problems[name] = ("NameConflict", f"name {name!r} is already used by {owner[name]}")
        else:
            owner[name] = f"adapter {name}"
            routed.add(name)
    kept: dict[str, tuple[str, ...]] = {}
    for name in sorted(routed):
        keep = []
        for alias in adapters[name]:
            if alias == name:
                continue
            if alias in owner and owner[alias] != f"adapter {name}":
                problems.setdefault(name, ("AliasConflict", f"alias {alias!r} is already used by {owner[alias]}"))
            elif alias not in keep:
                owner[alias] = f"adapter {name}"
                keep.append(alias)
        kept[name] = tuple(keep)
    return NameAssignment(frozenset(routed), kept, problems)


def pool_claims(pool: PoolInfo) -> tuple[str, ...]:
    """Names a pool answers to (its base model too: an adapter must not hijack it)."""
    return tuple(n for n in (pool.name, *pool.aliases, pool.base_model) if n)


def valid_adapter_name(name: str) -> bool:
    return bool(_ADAPTER_NAME_RE.match(name))


Claimant = tuple[str, str]  # (adapter name, "primary" | "alias")


def name_problem(
    name: str, aliases: Iterable[str], pool_owner: Mapping[str, str], claimants: Mapping[str, Iterable[Claimant]]
) -> tuple[str, str] | None:
    """The same verdict `assign_names` reaches for one adapter, from an index of claims.

    `pool_owner` maps every pool-claimed name to its pool; `claimants` maps a
    name to the adapters claiming it. Cost: proportional to this adapter's
    aliases, not to the namespace (the reconcile runs once per adapter).
    """
    if not valid_adapter_name(name):
        return (
            "InvalidName",
            f"name {name!r} is not a valid model name (lowercase letters, digits, '.', '_', '-', at most 128)",
        )
    if name in pool_owner:
        return ("NameConflict", f"name {name!r} is already used by pool {pool_owner[name]}")

    def routed(other: str) -> bool:
        return valid_adapter_name(other) and other not in pool_owner

    for alias in aliases:
        if alias == name:
            continue
        if alias in pool_owner:
            return ("AliasConflict", f"alias {alias!r} is already used by pool {pool_owner[alias]}")
        claims = list(claimants.get(alias, ()))
        primary = sorted(o for o, kind in claims if kind == "primary" and o != name and routed(o))
        if primary:
            return ("AliasConflict", f"alias {alias!r} is already used by adapter {primary[0]}")
        first = min((o for o, kind in claims if kind == "alias" and routed(o)), default=name)
        if first < name:
            return ("AliasConflict", f"alias {alias!r} is already used by adapter {first}")
    return None
