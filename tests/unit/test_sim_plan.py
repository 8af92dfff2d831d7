"""`loraplex plan`: traffic inputs, the search, and manifests that the CRD accepts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from loraplex.sim.cli import main
from loraplex.sim.costs import SDXL_A10G
from loraplex.sim.fleet import IMPROVED, SHIPPED
from loraplex.sim.plan import Target, apply_to_manifests, plan, recommendation_yaml
from loraplex.sim.project import RouterStats, parse_adapter_spec, parse_pool_spec
from loraplex.sim.traffic import load_json_docs, workload_from_prometheus, workload_from_stats
from loraplex.sim.workload import WorkloadSpec, build_workload, write_trace

REPO = next(p for p in Path(__file__).resolve().parents if (p / "crds").is_dir())  # any tests/ depth


def crd_spec_schema(kind: str) -> dict[str, Any]:
    name = {"BaseModelPool": "basemodelpools", "LoraAdapter": "loraadapters"}[kind]
    crd = yaml.safe_load((REPO / "crds" / f"loraplex.io_{name}.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def check_against_schema(value: Any, schema: dict[str, Any], path: str = "spec") -> None:
    """Every field is one the CRD declares, of its type and within its bounds."""
    if isinstance(value, dict):
        assert schema.get("type") == "object", path
        props = schema.get("properties")
        if props is None:
            return  # a free-form map (nodeSelector, affinity)
        for k, v in value.items():
            assert k in props, f"{path}.{k} is not a field of the CRD"
            check_against_schema(v, props[k], f"{path}.{k}")
        return
    t = schema.get("type")
    if t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), path
    elif t == "number":
        assert isinstance(value, int | float), path
    elif t == "string":
        assert isinstance(value, str), path
    elif t == "boolean":
        assert isinstance(value, bool), path
    if "minimum" in schema:
        assert value > schema["minimum"] if schema.get("exclusiveMinimum") else value >= schema["minimum"], path
    if "maximum" in schema:
        assert value <= schema["maximum"], path


def check_pool_rules(spec: dict[str, Any]) -> None:
    """The CRD's CEL rules that involve planned fields."""
    p = parse_pool_spec(spec)
    assert p.min_replicas <= p.max_replicas
    assert p.min_replicas <= p.replicas <= p.max_replicas
    assert p.autoscaling.scale_down_stabilization_seconds >= p.autoscaling.scale_up_stabilization_seconds


@pytest.fixture(scope="module")
def small_plan():
    w = build_workload(
        WorkloadSpec(n_adapters=300, rate=0.1, traffic="poisson", duration_s=2 * 3600, split=(("sdxl", 1.0),)), seed=4
    )
    return w, plan(
        w,
        Target.parse("1.5x"),
        SDXL_A10G,
        IMPROVED,
        seed=1,
        measure_from_s=1800.0,
        min_replicas=(1,),
        scale_down_s=(300,),
        utilizations=(0.9, 0.6, 0.3),
    )


def test_target_parsing() -> None:
    assert Target.parse("1.1x") == Target(1.1, True)
    assert Target.parse("10%").value == pytest.approx(1.1) and Target.parse("10%").ratio
    assert Target.parse("12s") == Target(12.0, False) and Target.parse("9.5") == Target(9.5, False)


def test_plan_meets_a_loose_target_and_recommends_valid_pool_settings(small_plan) -> None:
    w, result = small_plan
    assert result.met
    assert result.summary["p95_x"] <= 1.5
    spec = result.pools["sdxl"]
    check_against_schema(spec, crd_spec_schema("BaseModelPool"))
    check_pool_rules({"model": {"name": "sdxl"}, **spec, "replicas": spec["minReplicas"]})
    assert spec["autoscaling"]["targetUtilization"] in (0.9, 0.6, 0.3)
    assert set(spec["adapterCache"]) == {"gpuSlots", "ramCacheMB", "diskCacheMB"}
    assert spec["adapterCache"]["diskCacheMB"] >= spec["adapterCache"]["ramCacheMB"]
    # The cheapest feasible candidate won.
    feasible = [c for c in result.candidates if c.met]
    assert min(c.summary["gpu_hours"] for c in feasible) == pytest.approx(
        next(
            c for c in feasible if c.settings["targetUtilization"] == spec["autoscaling"]["targetUtilization"]
        ).summary["gpu_hours"]
    )


def test_recommendation_yaml_documents_validate(small_plan) -> None:
    _, result = small_plan
    result.adapters["lora-000"] = 3
    for doc in yaml.safe_load_all(recommendation_yaml(result)):
        kind = doc["kind"]
        check_against_schema(doc["spec"], crd_spec_schema(kind))
    del result.adapters["lora-000"]


def test_apply_to_the_sample_manifest(small_plan) -> None:
    _, result = small_plan
    sample = yaml.safe_load((REPO / "crds" / "samples" / "basemodelpool-sdxl.yaml").read_text())
    adapter = yaml.safe_load((REPO / "crds" / "samples" / "loraadapter-path.yaml").read_text())
    name = adapter["metadata"]["name"]
    docs, notes = apply_to_manifests([sample, adapter], result.pools, {name: 3})
    pool, lora = docs
    assert pool["metadata"] == sample["metadata"]
    assert pool["spec"]["model"] == sample["spec"]["model"]  # other fields kept
    assert pool["spec"]["nodeSelector"] == sample["spec"]["nodeSelector"]
    assert pool["spec"]["autoscaling"]["idleToZeroSeconds"] == 1800  # merged, not replaced
    for k in ("minReplicas", "maxReplicas"):
        assert pool["spec"][k] == result.pools["sdxl"][k]
    check_against_schema(pool["spec"], crd_spec_schema("BaseModelPool"))
    check_pool_rules(pool["spec"])
    assert lora["spec"]["minReplicas"] == 3 and lora["spec"]["maxReplicas"] >= 3
    check_against_schema(lora["spec"], crd_spec_schema("LoraAdapter"))
    parse_adapter_spec(lora["spec"])
    assert len(notes) == 2


def test_apply_refuses_a_file_without_a_matching_pool(small_plan) -> None:
    _, result = small_plan
    with pytest.raises(ValueError):
        apply_to_manifests([{"kind": "ConfigMap"}], result.pools, {})


def _stats_docs() -> list[dict]:
    """Two polls of two real RouterStats (the sidecar's own counters) one minute apart."""
    clock = {"t": 1000.0}
    stats = [RouterStats(pod=f"sdxl-{k}", clock=lambda: clock["t"], wall=lambda: clock["t"]) for k in range(2)]
    docs = []
    plan_ = [("a", 30, 10), ("b", 6, 4), ("c", 0, 2)]  # adapter, requests before poll 1, between polls
    for name, n, _ in plan_:
        for i in range(n):
            s = stats[i % 2]
            s.request_started("sdxl", [name])
            s.request_finished("sdxl", [name], 200, 9.0, service_s=8.6)
    clock["t"] = 1060.0
    docs += [s.snapshot() for s in stats]
    for name, _, n in plan_:
        for i in range(n):
            s = stats[i % 2]
            s.request_started("sdxl", [name])
            s.request_finished("sdxl", [name], 200, 9.0, service_s=8.6)
    clock["t"] = 1120.0
    docs += [s.snapshot() for s in stats]
    return docs


def test_stats_series_replays_the_requests_between_polls(tmp_path) -> None:
    docs = _stats_docs()
    path = tmp_path / "stats.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs))
    loaded = load_json_docs([path])
    assert len(loaded) == 4
    w, info = workload_from_stats(loaded, SDXL_A10G.inference_s)
    assert info.polls == 2 and info.sidecars == 2
    counts = {w.catalog.names[a]: int(n) for a, n in zip(*np.unique(w.adapter, return_counts=True), strict=True)}
    assert counts == {"a": 10, "b": 4, "c": 2}
    assert w.duration_s == pytest.approx(60.0) and np.all((w.t >= 0) & (w.t <= 60.0))
    assert w.catalog.base_factor["sdxl"] == pytest.approx(8.6 / SDXL_A10G.inference_s)


def test_stats_snapshot_rates_over_uptime() -> None:
    docs = _stats_docs()[:2]
    w, info = workload_from_stats(docs, SDXL_A10G.inference_s, duration_s=6000.0, seed=2)
    assert info.polls == 1
    # a: 30 requests in 60 s of uptime -> 0.5/s over 6000 s
    n_a = int((w.adapter == w.catalog.names.index("a")).sum())
    assert abs(n_a - 3000) < 200
    assert w.catalog.names == ["a", "b"]  # "c" had no request yet: the sidecars do not know it


def test_prometheus_query_range_export() -> None:
    doc = {
        "status": "success",
        "data": {
            "resultType": "matrix",
            "result": [
                {"metric": {"pool": "sdxl", "adapter": "a"}, "values": [[t, "0.5"] for t in range(0, 3600, 60)]},
                {"metric": {"pool": "sdxl", "adapter": "b"}, "values": [[t, "0.05"] for t in range(0, 3600, 60)]},
            ],
        },
    }
    w, info = workload_from_prometheus(doc, SDXL_A10G.inference_s, seed=1)
    na = int((w.adapter == w.catalog.names.index("a")).sum())
    assert abs(na - 0.5 * 3540) < 150
    assert info.pools["sdxl"] == pytest.approx(0.55)
    pool_only = {"data": {"result": [{"metric": {"pool": "sdxl"}, "values": [[t, "1.0"] for t in range(0, 600, 60)]}]}}
    w2, _ = workload_from_prometheus(pool_only, SDXL_A10G.inference_s, n_adapters=100, seed=1)
    assert len(w2.catalog) == 100 and abs(len(w2) - 540) < 100
    with pytest.raises(ValueError):
        workload_from_prometheus({"data": {}}, SDXL_A10G.inference_s)


def test_cli_sim_and_plan(tmp_path, capsys) -> None:
    assert (
        main(
            [
                "sim",
                "--adapters",
                "200",
                "--rate",
                "0.05",
                "--hours",
                "1",
                "--traffic",
                "poisson",
                "--policies",
                "seed,shipped",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows] == ["seed shared pool", SHIPPED.name]
    w = build_workload(
        WorkloadSpec(n_adapters=100, rate=0.05, traffic="poisson", duration_s=3600, split=(("sdxl", 1.0),)), 1
    )
    trace = tmp_path / "t.csv"
    write_trace(w, trace)
    manifest = tmp_path / "pool.yaml"
    manifest.write_text((REPO / "crds" / "samples" / "basemodelpool-sdxl.yaml").read_text())
    png = tmp_path / "plan.png"
    rc = main(
        [
            "plan",
            "--trace",
            str(trace),
            "--p95",
            "3x",
            "--policy",
            "improved",
            "--plot",
            str(png),
            "--apply-to",
            str(manifest),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "recommended settings" in out and "target met" in out
    assert png.stat().st_size > 1000
    spec = yaml.safe_load(manifest.read_text())["spec"]
    check_against_schema(spec, crd_spec_schema("BaseModelPool"))
    check_pool_rules(spec)
