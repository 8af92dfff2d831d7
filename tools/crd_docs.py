"""Generate docs/api.md, the API reference of the loraplex CRDs, from crds/*.yaml.

    python tools/crd_docs.py            # write docs/api.md
    python tools/crd_docs.py --check    # exit 1 if docs/api.md is not what the CRDs give (tests run this)

Every field's description, type, constraints and default come from the CRD schemas, the same text
`kubectl explain` shows; CEL rules are listed per object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
OUT = ROOT / "docs" / "api.md"
CONSTRAINTS = ("enum", "minimum", "maximum", "minLength", "maxLength", "maxItems", "pattern", "format")


def _type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    t = schema.get("type", "")
    if t == "array":
        return f"array of {_type(schema.get('items') or {})}"
    if t == "object" and "additionalProperties" in schema:
        return f"map of {_type(schema['additionalProperties'])}"
    return str(t)


def _constraints(schema: dict[str, Any]) -> str:
    out = []
    for key in CONSTRAINTS:
        if key not in schema:
            continue
        value = schema[key]
        if key == "enum":
            out.append("one of " + ", ".join(f"`{v}`" for v in value))
        elif key == "minimum" and schema.get("exclusiveMinimum"):
            out.append(f"> {value}")
        else:
            out.append(f"{key} {value if key != 'pattern' else f'`{value}`'}")
    return "; ".join(out)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _rows(schema: dict[str, Any], path: str, required: set[str]) -> list[str]:
    rows = []
    for name, sub in (schema.get("properties") or {}).items():
        field = f"{path}.{name}" if path else name
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        kind = _type(sub) + (" (required)" if name in required else "")
        notes = _constraints(sub)
        rows.append(
            f"| `{field}` | {_cell(kind)} | {_cell(default)} | {_cell(sub.get('description', ''))}"
            f"{' ' + _cell('(' + notes + ')') if notes else ''} |"
        )
        nested = sub.get("items") if sub.get("type") == "array" else sub
        if isinstance(nested, dict):
            rows += _rows(nested, field + ("[]" if nested is not sub else ""), set(nested.get("required") or []))
    return rows


def _rules(schema: dict[str, Any], path: str) -> list[str]:
    out = [f"- `{path or '.'}`: {r['message']} (`{r['rule']}`)" for r in schema.get("x-kubernetes-validations") or []]
    for name, sub in (schema.get("properties") or {}).items():
        out += _rules(sub, f"{path}.{name}" if path else name)
    return out


def render() -> str:
    parts = [
        "# API reference: loraplex.io/v1alpha1",
        "",
        "Generated from `crds/*.yaml` by `tools/crd_docs.py`; do not edit by hand "
        "(`python tools/crd_docs.py` rewrites it, a unit test checks it). "
        "`kubectl explain <kind>.<field>` shows the same descriptions.",
    ]
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names, version = crd["spec"]["names"], crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        parts += [
            "",
            f"## {names['kind']}",
            "",
            f"`{crd['spec']['group']}/{version['name']}`, {crd['spec']['scope'].lower()}; "
            f"plural `{names['plural']}`, short names {', '.join(f'`{s}`' for s in names.get('shortNames', []))}, "
            f"categories {', '.join(f'`{c}`' for c in names.get('categories', []))}.",
        ]
        for top in ("spec", "status"):
            sub = schema["properties"][top]
            parts += ["", f"### {top}", "", sub.get("description", ""), ""]
            parts += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
            parts += _rows(sub, top, set(sub.get("required") or []))
        rules = _rules(schema, "")
        if rules:
            parts += ["", "### Validation rules (checked by the apiserver)", "", *rules]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="fail if docs/api.md is out of date")
    a = p.parse_args(argv)
    text = render()
    if a.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: python tools/crd_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
