"""The CRDs teach (`kubectl explain`): every field has a description, and docs/api.md is generated from them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tools"))

import crd_docs  # noqa: E402

# The apiserver refuses anything but name/generateName under the top-level metadata (its schema is implicit).
IMPLICIT = {"metadata"}


def _undescribed(schema: dict[str, Any], path: str) -> list[str]:
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        field = f"{path}.{name}" if path else name
        if not sub.get("description") and field not in IMPLICIT:
            out.append(field)
        out += _undescribed(sub, field)
        if isinstance(sub.get("items"), dict):
            out += _undescribed(sub["items"], field + "[]")
    return out


@pytest.mark.parametrize("crd", sorted(p.name for p in (ROOT / "crds").glob("*.yaml")))
def test_every_crd_field_has_a_description(crd: str) -> None:
    doc = yaml.safe_load((ROOT / "crds" / crd).read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _undescribed(schema, "") == []
    assert schema["properties"]["metadata"] == {"type": "object"}  # anything more is refused by the apiserver


def test_api_reference_is_up_to_date() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == crd_docs.render(), "run: python tools/crd_docs.py"
    assert "`spec.adapterCache.maxRank`" in crd_docs.render()
