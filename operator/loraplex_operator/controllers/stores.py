"""The operator's own views of every pool and adapter, fed in event order by their reflectors (no I/O).

They replace kopf's indexes on these kinds: kopf marks an index ready only
after a per-object toggle for every listed object, and each toggle notifies
every waiter, so an operator restart at 10,000 adapters did not finish in ten
minutes. Here an object costs one dict update; the reflector says when the
first LIST is in (`Reflector.listed`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from loraplex_operator.logic.resolution import Claimant, PoolInfo
from loraplex_operator.logic.routes import pool_info
from loraplex_operator.logic.specs import SpecError, parse_pool_spec

Key = tuple[str, str]  # (namespace, name)

# What the routing table needs of an adapter's status, its residency (the autoscaler writes it only on change), and
# the pool it is routed to (a deleted pool wakes its adapters).
_SNAPSHOT_STATUS = (
    "pool",
    "resolvedRevision",
    "resolvedGeneration",
    "resolvedFilename",
    "resident",
    "residentPods",
    "residentSummary",
)


def adapter_snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the routing table needs of an adapter (routes.build_table's input) and its residency, as a plain dict."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "generation", "deletionTimestamp") if k in meta},
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "status": {k: copy.deepcopy(status[k]) for k in _SNAPSHOT_STATUS if k in status},
    }


def object_key(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def adapter_claims(name: str, spec: Mapping[str, Any]) -> dict[str, str]:
    """The names an adapter claims: its own ("primary") and each alias ("alias")."""
    claims = {alias: "alias" for alias in spec.get("aliases") or [] if isinstance(alias, str)}
    claims[name] = "primary"
    return claims


class AdapterStore:
    """Every adapter's snapshot, and the names adapters claim, by namespace."""

    def __init__(self) -> None:
        self._snapshots: dict[str, dict[str, dict[str, Any]]] = {}
        self._claims: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> claimed name -> {adapter: kind}

    def apply(self, event_type: str | None, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Take one watch event (None: listed). Returns the adapter's previous snapshot, if any."""
        ns, name = object_key(body)
        previous = self._snapshots.get(ns, {}).get(name)
        if previous is not None:
            self._unclaim(ns, name, previous)
        if event_type == "DELETED":
            if previous is not None:
                del self._snapshots[ns][name]
                if not self._snapshots[ns]:
                    del self._snapshots[ns]
            return previous
        snap = adapter_snapshot(body)
        self._snapshots.setdefault(ns, {})[name] = snap
        claims = self._claims.setdefault(ns, {})
        for claimed, kind in adapter_claims(name, snap["spec"]).items():
            claims.setdefault(claimed, {})[name] = kind
        return previous

    def _unclaim(self, ns: str, name: str, snap: Mapping[str, Any]) -> None:
        claims = self._claims.get(ns, {})
        for claimed in adapter_claims(name, snap["spec"]):
            holders = claims.get(claimed)
            if holders is not None:
                holders.pop(name, None)
                if not holders:
                    del claims[claimed]
        if not claims:
            self._claims.pop(ns, None)

    def snapshots(self, namespace: str) -> list[dict[str, Any]]:
        return list(self._snapshots.get(namespace, {}).values())

    def claimants(self, namespace: str) -> Mapping[str, Iterable[Claimant]]:
        return _Claimants(self._claims.get(namespace, {}))

    def served_by(self, namespace: str, pool: str) -> list[str]:
        return [n for n, s in self._snapshots.get(namespace, {}).items() if s["status"].get("pool") == pool]

    def keys(self) -> Iterator[Key]:
        for ns, snaps in self._snapshots.items():
            for name in snaps:
                yield (ns, name)

    def __len__(self) -> int:
        return sum(len(s) for s in self._snapshots.values())


class _Claimants(Mapping[str, list[Claimant]]):
    """`{name: [(adapter, kind), ...]}` over one namespace's claims, built on look-up."""

    def __init__(self, claims: Mapping[str, Mapping[str, str]]) -> None:
        self._claims = claims

    def __getitem__(self, name: str) -> list[Claimant]:
        return list(self._claims[name].items())

    def __iter__(self) -> Iterator[str]:
        return iter(self._claims)

    def __len__(self) -> int:
        return len(self._claims)


class PoolStore:
    """What an adapter reconcile needs of each pool (its PoolInfo), by namespace; a pool whose spec does not parse
    is left out (its own status says why)."""

    def __init__(self) -> None:
        self._infos: dict[str, dict[str, PoolInfo | None]] = {}

    def apply(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Take one watch event (None: listed). True when what adapters see of the pool changed."""
        ns, name = object_key(body)
        pools = self._infos.setdefault(ns, {})
        known = name in pools
        previous = pools.get(name)
        if event_type == "DELETED":
            pools.pop(name, None)
            if not pools:
                del self._infos[ns]
            return known
        try:
            info: PoolInfo | None = pool_info(name, parse_pool_spec(dict(body.get("spec") or {})))
        except SpecError:
            info = None
        pools[name] = info
        return not known or info != previous

    def infos(self, namespace: str) -> list[PoolInfo]:
        return [i for i in self._infos.get(namespace, {}).values() if i is not None]

    def keys(self) -> Iterator[Key]:
        for ns, pools in self._infos.items():
            for name in pools:
                yield (ns, name)

    def __len__(self) -> int:
        return sum(len(p) for p in self._infos.values())
