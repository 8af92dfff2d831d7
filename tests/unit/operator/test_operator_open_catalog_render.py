"""spec.openCatalog reaches the workers (one --open-catalog policy argument) and the sidecars (the table's marker)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference_pod.worker.config import config_from_args
from loraplex.api.open_catalog import OpenCatalogPolicy, parse_policy
from loraplex.api.routing_table import dump_table, parse_table
from loraplex_operator.logic.manifests import worker_args
from loraplex_operator.logic.routes import build_table
from loraplex_operator.logic.specs import SpecError, parse_pool_spec
from tests.unit.operator.test_operator_routes import pool

OPEN = {
    "enabled": True,
    "allowOwners": ["alice", "team-*"],
    "denyRepos": ["alice/nsfw-*"],
    "baseModels": ["org/sdxl-finetune"],
    "maxFileMB": 64,
    "negativeTtlSeconds": 60,
    "endpoint": "https://hub.example.test",
}


def _spec(**extra: Any) -> Any:
    return parse_pool_spec({"model": {"name": "stabilityai/sdxl"}, **extra})


def _policy_arg(args: list[str]) -> str | None:
    return args[args.index("--open-catalog") + 1] if "--open-catalog" in args else None


def test_off_by_default_no_worker_argument_no_table_marker() -> None:
    assert _spec().open_catalog.enabled is False
    assert _policy_arg(worker_args(_spec())) is None
    assert _policy_arg(worker_args(_spec(openCatalog={"allowOwners": ["a"]}))) is None  # not enabled: nothing
    table = build_table([pool("sdxl")], [], {}).table
    assert table.pools["sdxl"].open_catalog is False
    assert "openCatalog" not in dump_table(table)


def test_enabled_policy_is_rendered_for_the_worker_and_parses_back() -> None:
    raw = _policy_arg(worker_args(_spec(openCatalog=OPEN)))
    assert raw is not None
    policy = parse_policy(raw)
    assert policy == OpenCatalogPolicy(
        enabled=True,
        allow_owners=("alice", "team-*"),
        deny_repos=("alice/nsfw-*",),
        base_models=("org/sdxl-finetune",),
        max_file_bytes=64 << 20,
        negative_ttl_seconds=60,
        endpoint="https://hub.example.test",
    )
    cfg = config_from_args(["--open-catalog", raw])  # the worker takes exactly what the operator writes
    assert cfg.open_catalog == policy


def test_the_table_marks_open_pools_for_the_sidecars() -> None:
    table = build_table([pool("sdxl", openCatalog=OPEN), pool("flux", model="flux")], [], {}).table
    assert table.pools["sdxl"].open_catalog and not table.pools["flux"].open_catalog
    assert parse_table(dump_table(table)).pools["sdxl"].open_catalog


def test_worker_refuses_a_malformed_policy_naming_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config_from_args(["--open-catalog", json.dumps({"enabled": True, "maxFileBytes": -1})])
    assert "--open-catalog: maxFileBytes" in capsys.readouterr().err


def test_spec_bounds() -> None:
    with pytest.raises(SpecError, match="maxFileMB"):
        _spec(openCatalog={"enabled": True, "maxFileMB": 0})
