"""The routing table: which pool serves which model name, and from where.

A versioned JSON document shared by the operator (writer), the sidecar
(router) and the worker (adapter sources). It is stored whole in a file
(local mode, tests) or split into shards, one ConfigMap each, that
`merge_shards` joins back. Parsing is strict: a malformed document raises
`TableError` naming the field, so a reader can keep its last good table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, model_validator

SCHEMA_VERSION: Final = 1


class TableError(ValueError):
    """A routing table that cannot be used; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class HubSource(_Strict):
    type: Literal["hub"] = "hub"
    repo: str = Field(min_length=1)
    revision: str = "main"
    filename: str | None = None
    token_env: str | None = Field(default=None, alias="tokenEnv")


class UrlSource(_Strict):
    type: Literal["url"] = "url"
    url: str = Field(pattern=r"^https?://")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class PathSource(_Strict):
    type: Literal["path"] = "path"
    path: str = Field(min_length=1)


AdapterSource = Annotated[HubSource | UrlSource | PathSource, Field(discriminator="type")]


class AdapterEntry(_Strict):
    pool: str
    source: AdapterSource
    aliases: tuple[str, ...] = ()
    scale: float = Field(default=1.0, ge=-10.0, le=10.0)
    replication: int = Field(default=1, ge=1, le=64)
    pinned: bool = False
    # Changes whenever the bytes may have: a pinned hub commit, a sha256, a
    # file's mtime; the worker's "known bad" memory is keyed on it.
    revision: str = ""
    # An open-catalog adapter the sidecar made up from a request's name (never in a table): the worker checks it
    # against its pool's open-catalog policy and the hub's metadata before fetching anything.
    on_demand: bool = Field(default=False, alias="onDemand")


class Endpoint(_Strict):
    name: str
    url: str = Field(pattern=r"^https?://")
    ready: bool = True


class PoolEntry(_Strict):
    base_model: str = Field(default="", alias="baseModel")
    aliases: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    # Spill to non-home pods when every home has more outstanding requests
    # than load_bound x the pool's mean outstanding (+1).
    load_bound: float = Field(default=1.25, ge=1.0, alias="loadBound")
    # Gateway (activator) mode: how long to hold a request while the pool has
    # no ready endpoint, e.g. scaled to zero.
    activation_timeout_s: float = Field(default=0.0, ge=0.0, alias="activationTimeoutSeconds")
    # How a sidecar orders the pods for a request: "cost" (queued work on a shared in-flight view + swap cost,
    # idle probes first: placement.choose_endpoint_cost / attempt_plan) or "rendezvous" (the homes' least
    # outstanding of this sidecar's own requests, spill over load_bound: placement.choose_endpoint).
    policy: Literal["cost", "rendezvous"] = "cost"
    # Candidates asked "only if idle" before the plain choice (cost policy).
    idle_probes: int = Field(default=3, ge=0, le=16, alias="idleProbes")
    # The pool serves hub adapters on demand (spec.openCatalog.enabled): a request for an unregistered
    # `owner/repo` name is routed here by rendezvous on the name; the pool's workers check it against the policy.
    open_catalog: bool = Field(default=False, alias="openCatalog")


class RoutingTable(_Strict):
    version: Literal[1] = SCHEMA_VERSION
    generation: int = 0
    pools: dict[str, PoolEntry] = {}
    adapters: dict[str, AdapterEntry] = {}
    _name_index: dict[str, tuple[str, str | None]] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_references(self) -> RoutingTable:
        names: dict[str, str] = {}
        # Several pools may share a base model (e.g. two GPU types); any other
        # name must be unique across pool names, aliases, base models and adapters.
        base_models = {p.base_model: name for name, p in sorted(self.pools.items()) if p.base_model}
        for pool_name, pool in self.pools.items():
            seen_eps: set[str] = set()
            for ep in pool.endpoints:
                if ep.name in seen_eps:
                    raise ValueError(f"pools.{pool_name}.endpoints: duplicate endpoint name {ep.name!r}")
                seen_eps.add(ep.name)
            for n in (pool_name, *pool.aliases):
                if n in names:
                    raise ValueError(f"pools.{pool_name}: name {n!r} already used by {names[n]}")
                if n in base_models and base_models[n] != pool_name:
                    raise ValueError(
                        f"pools.{pool_name}: name {n!r} already used by the base model of pool {base_models[n]}"
                    )
                names[n] = f"pool {pool_name}"
        for ad_name, ad in self.adapters.items():
            if ad.pool not in self.pools:
                raise ValueError(f"adapters.{ad_name}.pool: unknown pool {ad.pool!r}")
            for n in (ad_name, *ad.aliases):
                if n in names:
                    raise ValueError(f"adapters.{ad_name}: name {n!r} already used by {names[n]}")
                if n in base_models:
                    raise ValueError(
                        f"adapters.{ad_name}: name {n!r} already used by the base model of pool {base_models[n]}"
                    )
                names[n] = f"adapter {ad_name}"
        return self

    def __eq__(self, other: object) -> bool:
        # The fields only: a table whose name index was built (by resolve, or ShardMerger) is the same table.
        if not isinstance(other, RoutingTable):
            return NotImplemented
        return (self.version, self.generation, self.pools, self.adapters) == (
            other.version,
            other.generation,
            other.pools,
            other.adapters,
        )

    __hash__ = None  # type: ignore[assignment]

    def resolve(self, model: str) -> tuple[str, str | None]:
        """Map a model name or alias to (pool, adapter name or None for the base model)."""
        index = self._index()
        if model not in index:
            raise KeyError(model)
        return index[model]

    def _index(self) -> dict[str, tuple[str, str | None]]:
        cached = self._name_index
        if cached is None:
            cached = _pool_names(self.pools)
            cached.update(_adapter_names(self.adapters)[0])
            self._name_index = cached
        return cached


def _pool_names(pools: dict[str, PoolEntry]) -> dict[str, tuple[str, str | None]]:
    names: dict[str, tuple[str, str | None]] = {}
    # Sorted so a base model shared by pools resolves to the same pool
    # (the first by name) whatever order the shards came in.
    for pool_name, pool in sorted(pools.items()):
        for n in (pool_name, pool.base_model, *pool.aliases):
            if n:
                names.setdefault(n, (pool_name, None))
    return names


def _adapter_names(adapters: dict[str, AdapterEntry]) -> tuple[dict[str, tuple[str, str | None]], int]:
    """Every adapter name and alias -> (pool, adapter), and how many were inserted (more than the dict's
    length when a name is used twice)."""
    names: dict[str, tuple[str, str | None]] = {}
    count = 0
    for ad_name, ad in adapters.items():
        names[ad_name] = (ad.pool, ad_name)
        count += 1 + len(ad.aliases)
        for n in ad.aliases:
            names[n] = (ad.pool, ad_name)
    return names, count


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<document>"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def _json_object(data: str | bytes | dict[str, Any], what: str) -> dict[str, Any]:
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes
            raise TableError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise TableError(f"{what} must be a JSON object")
    return data


def parse_table(data: str | bytes | dict[str, Any]) -> RoutingTable:
    """Parse and validate a routing table document; raise TableError naming the field."""
    data = _json_object(data, "routing table")
    try:
        return RoutingTable.model_validate(data)
    except ValidationError as e:
        raise TableError(_format_validation_error(e)) from e


def dump_table(table: RoutingTable) -> str:
    """Deterministic JSON: same table, same bytes."""
    doc = table.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    # exclude_defaults drops each source's default `type`, the discriminator
    # parse_table needs: put it back so dump -> parse round-trips.
    for name, entry in doc.get("adapters", {}).items():
        entry.setdefault("source", {})["type"] = table.adapters[name].source.type
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def adapter_doc(entry: AdapterEntry) -> dict[str, Any]:
    """One adapter entry as `dump_table` writes it (a JSON-ready dict)."""
    doc = entry.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    doc.setdefault("source", {})["type"] = entry.source.type
    return doc


def merge_shards(shards: list[str | bytes | dict[str, Any]]) -> RoutingTable:
    """Join shard documents (each a partial table) into one validated table.

    Pools may appear in any shard; adapters are the union. The generation is
    the highest seen. A shard that is malformed JSON fails the whole merge so
    the reader keeps its last good table rather than routing on half of one.
    """
    return ShardMerger().merge(shards)


class _Shard(BaseModel):
    """One shard document: a partial table (pydantic parses its JSON itself, in Rust)."""

    model_config = ConfigDict(frozen=True)
    version: Literal[1] = SCHEMA_VERSION
    generation: StrictInt = 0
    pools: dict[str, PoolEntry] = {}
    adapters: dict[str, AdapterEntry] = {}


def _parse_shard(shard: str | bytes | dict[str, Any], i: int) -> _Shard:
    try:
        if isinstance(shard, str | bytes):
            return _Shard.model_validate_json(shard)
        return _Shard.model_validate(shard)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            raise TableError(f"shard {i} is not valid JSON: {first['msg']}") from e
        if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
            raise TableError(f"shard {i} must be a JSON object") from e
        raise TableError(f"shard {i}: {_format_validation_error(e)}") from e


@dataclass(frozen=True)
class _ParsedShard:
    """A parsed shard and what the whole-table check needs of it, computed once per shard version."""

    shard: _Shard
    names: dict[str, tuple[str, str | None]]  # its adapters' names and aliases
    name_count: int  # names inserted: more than len(names) when the shard uses one twice
    pools_used: frozenset[str]

    @classmethod
    def of(cls, shard: _Shard) -> _ParsedShard:
        names, count = _adapter_names(shard.adapters)
        return cls(shard, names, count, frozenset(ad.pool for ad in shard.adapters.values()))


class ShardMerger:
    """`merge_shards` with a memory: a shard whose bytes did not change since the last merge is not parsed again.

    A sidecar re-merges its table whenever one ConfigMap changes; at 30,000
    adapters (16 shards) parsing every shard each time took over a second,
    re-parsing only the changed one a tenth of that. The joined table is still
    checked whole (names unique across shards, every adapter's pool known), from
    each shard's name index kept with it: joining dicts, not re-walking 30,000
    entries in Python. Any doubt (a name used twice, an unknown pool) falls back to
    the full validation, which names the field.
    """

    def __init__(self) -> None:
        self._cache: dict[str | bytes, _ParsedShard] = {}

    def merge(self, shards: list[str | bytes | dict[str, Any]]) -> RoutingTable:
        cache: dict[str | bytes, _ParsedShard] = {}
        parts: list[_ParsedShard] = []
        for i, shard in enumerate(shards):
            hashable = isinstance(shard, str | bytes)
            part = self._cache.get(shard) if hashable else None  # type: ignore[arg-type]
            if part is None:
                part = _ParsedShard.of(_parse_shard(shard, i))
            if hashable:
                cache[shard] = part  # type: ignore[index]
            parts.append(part)
        self._cache = cache  # only the current shards: old versions are let go
        pools: dict[str, PoolEntry] = {}
        adapters: dict[str, AdapterEntry] = {}
        generation = 0
        for part in parts:
            generation = max(generation, part.shard.generation)
            pools.update(part.shard.pools)
            adapters.update(part.shard.adapters)
        fields = {"version": SCHEMA_VERSION, "generation": generation, "pools": pools, "adapters": adapters}
        table = _checked_fast(fields, parts)
        if table is not None:
            return table
        # The entries are validated models already (pydantic keeps instances as they are): this checks the whole
        # and names what is wrong.
        try:
            return RoutingTable.model_validate(fields)
        except ValidationError as e:
            raise TableError(_format_validation_error(e)) from e


def _checked_fast(fields: dict[str, Any], parts: list[_ParsedShard]) -> RoutingTable | None:
    """The joined table when the whole-table rules plainly hold, else None (let full validation say why)."""
    pools: dict[str, PoolEntry] = fields["pools"]
    names: dict[str, tuple[str, str | None]] = {}
    count = 0
    for part in parts:
        names.update(part.names)
        count += part.name_count
    if count != len(names):
        return None  # a name used twice (or one adapter in two shards)
    if not all(part.pools_used <= pools.keys() for part in parts):
        return None
    pool_names = _pool_names(pools)
    if any(n in names for n in pool_names):
        return None
    try:
        RoutingTable.model_validate({"pools": pools})  # the pools' own rules (few entries)
    except ValidationError:
        return None
    table = RoutingTable.model_construct(**fields)
    table._name_index = {**pool_names, **names}
    return table
