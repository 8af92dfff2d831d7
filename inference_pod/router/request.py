"""A generation request as the router sees it: validation, name resolution, the route header.

Errors are raised as `loraplex.api.errors.ApiError` (the OpenAI error shape
the worker uses too), naming the field at fault in `param`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loraplex.api.errors import ApiError
from loraplex.api.routing_table import RoutingTable


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


def resolve_request(table: RoutingTable, model: str, extra: list[str]) -> Resolved:
    """Map the request's model and adapter names to one pool and canonical adapters."""
    try:
        pool, model_adapter = table.resolve(model)
    except KeyError:
        raise ApiError(404, f"The model '{model}' does not exist.", param="model", code="model_not_found") from None
    adapters = [model_adapter] if model_adapter else []
    names = {model: model_adapter} if model_adapter else {}
    for i, name in enumerate(extra):
        try:
            p, a = table.resolve(name)
        except KeyError:
            raise ApiError(
                404, f"The adapter '{name}' does not exist.", param=f"adapters[{i}].name", code="model_not_found"
            ) from None
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
    return Resolved(pool, model_adapter, tuple(adapters), names)


def route_header(table: RoutingTable, r: Resolved) -> str:
    doc = {
        "pool": r.pool,
        "model": r.model_adapter,
        "adapters": {a: table.adapters[a].model_dump(mode="json", by_alias=True) for a in r.adapters},
        "names": r.names,
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)
