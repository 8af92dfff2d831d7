"""The pydantic spec models mirror the CRD schema's defaults and enums."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex_operator.logic.specs import SpecError, parse_adapter_spec, parse_pool_spec

CRDS = Path(__file__).resolve().parents[3] / "crds"


def _schema(kind_file: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / kind_file).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver's structural defaulting produces for an empty object."""
    out: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        if "default" in prop:
            value = prop["default"]
            if isinstance(value, dict) and prop.get("properties"):
                value = {**_defaults(prop), **value}
            out[name] = value
    return out


def _assert_defaults_match(schema: dict[str, Any], model: dict[str, Any], path: str = "spec") -> int:
    checked = 0
    for name, prop in (schema.get("properties") or {}).items():
        # Objects without a default of their own (e.g. the required `model`) still default inside.
        if "default" not in prop and prop.get("properties") and isinstance(model.get(name), dict):
            checked += _assert_defaults_match(prop, model[name], f"{path}.{name}")
    for name, value in _defaults(schema).items():
        assert name in model, f"{path}.{name} has a CRD default but no model field"
        if isinstance(value, dict):
            checked += _assert_defaults_match(schema["properties"][name], model[name], f"{path}.{name}")
        else:
            got = model[name]
            got = list(got) if isinstance(got, tuple) else got  # the models keep lists as tuples (frozen)
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert float(got) == float(value), f"{path}.{name}: CRD {value!r} vs model {got!r}"
            else:
                assert got == value, f"{path}.{name}: CRD {value!r} vs model {got!r}"
            checked += 1
    return checked


def test_pool_defaults_match_crd() -> None:
    spec = parse_pool_spec({"model": {"name": "tiny"}}).model_dump(by_alias=True)
    assert _assert_defaults_match(_schema("loraplex.io_basemodelpools.yaml"), spec) >= 32


def test_adapter_defaults_match_crd() -> None:
    spec = parse_adapter_spec({"pool": "p", "source": {"type": "path", "path": "/x.safetensors"}})
    dumped = spec.model_dump(by_alias=True)
    assert _assert_defaults_match(_schema("loraplex.io_loraadapters.yaml"), dumped) >= 4
    assert spec.source.revision == "main"


def test_pool_enums_match_crd() -> None:
    schema = _schema("loraplex.io_basemodelpools.yaml")
    for dtype in schema["properties"]["model"]["properties"]["dtype"]["enum"]:
        assert parse_pool_spec({"model": {"name": "m", "dtype": dtype}}).model.dtype == dtype
    for policy in schema["properties"]["imagePullPolicy"]["enum"]:
        assert parse_pool_spec({"model": {"name": "m"}, "imagePullPolicy": policy}).image_pull_policy == policy


def test_quantities_accept_int_or_string() -> None:
    spec = parse_pool_spec({"model": {"name": "m"}, "resources": {"cpu": 2, "memory": "4Gi"}})
    assert spec.resources.cpu == "2"
    assert spec.resources.memory == "4Gi"


def test_invalid_spec_names_the_field() -> None:
    with pytest.raises(SpecError, match=r"spec\.model"):
        parse_pool_spec({})
    with pytest.raises(SpecError, match=r"spec\.source\.type"):
        parse_adapter_spec({"pool": "p", "source": {"type": "ftp"}})


def test_unknown_fields_are_ignored() -> None:
    # An older operator reading a newer CRD's object must not fail.
    assert parse_pool_spec({"model": {"name": "m"}, "futureField": 1}).model.name == "m"
