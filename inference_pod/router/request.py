"""A generation request as the router sees it: validation, name resolution, the route header.

Errors are raised as `loraplex.api.errors.ApiError` (the OpenAI error shape
the worker uses too), naming the field at fault in `param`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loraplex.api.errors import ApiError
from loraplex.api.open_catalog import OnDemandNameError, looks_on_demand, parse_on_demand
from loraplex.api.routing_table import AdapterEntry, HubSource, RoutingTable


def validate_generation(payload: Any) -> tuple[str, list[str]]:
    """The `model` and the requested adapter names of a generation body; ApiError 400 otherwise."""
    if not isinstance(payload, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_body")
    model = payload.get("model")
    if model is None:
        raise ApiError(400, "Missing required field: 'model'.", param="model", code="missing_field")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' must be a non-empty string.", param="model", code="invalid_type")
    adapters = payload.get("adapters")
    names: list[str] = []
    if adapters is None:
        return model, names
    if not isinstance(adapters, list):
        raise ApiError(
            400,
            '\'adapters\' must be a list of {"name", "scale"} objects or names.',
            param="adapters",
            code="invalid_type",
        )
    for i, item in enumerate(adapters):
        if isinstance(item, str):  # shorthand the worker accepts too: "name" for {"name": "name"}
            item = {"name": item}
        if not isinstance(item, dict):
            raise ApiError(
                400, f"'adapters[{i}]' must be an object with a 'name'.", param=f"adapters[{i}]", code="invalid_type"
            )
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(
                400,
                f"'adapters[{i}].name' must be a non-empty string.",
                param=f"adapters[{i}].name",
                code="missing_field" if name is None else "invalid_type",
            )
        scale = item.get("scale")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float)):
            raise ApiError(
                400, f"'adapters[{i}].scale' must be a number.", param=f"adapters[{i}].scale", code="invalid_type"
            )
        names.append(name)
    return model, names


@dataclass(frozen=True)
class Resolved:
    pool: str
    model_adapter: str | None  # canonical adapter the `model` field names, if any
    adapters: tuple[str, ...]  # every canonical adapter involved, placement key first
    names: dict[str, str]  # requested name/alias -> canonical adapter
    # Open-catalog adapters of this request (not in the table): canonical name -> the entry the worker checks.
    on_demand: dict[str, AdapterEntry] = field(default_factory=dict)

    def entry(self, table: RoutingTable, name: str) -> AdapterEntry:
        """The routing entry of one of this request's canonical adapters."""
        return self.on_demand[name] if name in self.on_demand else table.adapters[name]


def open_catalog_pools(table: RoutingTable) -> list[str]:
    """The pools that serve hub adapters on demand, by name (the first is the default for an unqualified name)."""
    return sorted(name for name, pool in table.pools.items() if pool.open_catalog)


def resolve_on_demand(
    table: RoutingTable, name: str, param: str, pool: str | None = None
) -> tuple[str, str, AdapterEntry] | None:
    """(pool, canonical name, entry) for an unregistered `[pool/]owner/repo[@rev][:file]` name; None when no pool
    could serve it on demand (the caller answers 404). `pool`: the pool the request already runs on.

    Only the name's shape is checked here (400 naming `param`); the policy and the hub's metadata are the worker's.
    """
    open_pools = open_catalog_pools(table)
    if not open_pools or not looks_on_demand(name):
        return None
    try:
        qualifier, ref = parse_on_demand(name)
    except OnDemandNameError as e:
        raise ApiError(400, f"'{param}': {e}.", param=param, code="invalid_adapter_name") from None
    if qualifier is not None:
        try:
            target, adapter = table.resolve(qualifier)
        except KeyError:
            return None
        if adapter is not None:
            return None
    else:
        target = pool if pool is not None else open_pools[0]
    if target not in open_pools or (pool is not None and target != pool):
        return None
    source = HubSource(repo=ref.repo_id, revision=ref.revision, filename=ref.filename)
    return target, ref.name, AdapterEntry(pool=target, source=source, on_demand=True)


def resolve_request(table: RoutingTable, model: str, extra: list[str]) -> Resolved:
    """Map the request's model and adapter names to one pool and canonical adapters.

    A name the table does not know, shaped `owner/repo`, goes to a pool with an open catalog (`resolve_on_demand`).
    """
    on_demand: dict[str, AdapterEntry] = {}
    try:
        pool, model_adapter = table.resolve(model)
    except KeyError:
        found = resolve_on_demand(table, model, "model")
        if found is None:
            raise ApiError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found") from None
        pool, model_adapter, entry = found
        on_demand[model_adapter] = entry
    adapters = [model_adapter] if model_adapter else []
    names = {model: model_adapter} if model_adapter else {}
    for i, name in enumerate(extra):
        try:
            p, a = table.resolve(name)
        except KeyError:
            found = resolve_on_demand(table, name, f"adapters[{i}].name", pool)
            if found is None:
                raise ApiError(
                    404, f"The adapter '{name}' does not exist.", param=f"adapters[{i}].name", code="model_not_found"
                ) from None
            p, a, entry = found
            on_demand[a] = entry
        if a is None:
            raise ApiError(
                400, f"'{name}' is a base model, not an adapter.", param=f"adapters[{i}].name", code="not_an_adapter"
            )
        if p != pool:
            raise ApiError(
                400,
                f"The adapter '{name}' runs on pool '{p}' but the model '{model}' on pool '{pool}'.",
                param=f"adapters[{i}].name",
                code="pool_mismatch",
            )
        names[name] = a
        if a not in adapters:
            adapters.append(a)
    return Resolved(pool, model_adapter, tuple(adapters), names, on_demand)


def route_header(table: RoutingTable, r: Resolved) -> str:
    doc = {
        "pool": r.pool,
        "model": r.model_adapter,
        "adapters": {a: r.entry(table, a).model_dump(mode="json", by_alias=True) for a in r.adapters},
        "names": r.names,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
