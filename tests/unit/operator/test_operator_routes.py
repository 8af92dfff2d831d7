"""Routing table built from pools, adapters and pods; sharding into ConfigMaps (pure)."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import pytest

from loraplex.api.routing_table import merge_shards, parse_table
from loraplex_operator import constants as c
from loraplex_operator.logic.podstate import ReadyPod
from loraplex_operator.logic.resolution import PoolInfo, assign_names, name_problem, pool_claims, resolve_pool
from loraplex_operator.logic.routes import build_table
from loraplex_operator.logic.shards import CONFIGMAP_LIMIT, plan, shard_configmaps, split_table, stable_hash
from loraplex_operator.logic.specs import parse_adapter_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pool(name: str, model: str = "stabilityai/sdxl", aliases: list[str] | None = None, **extra: Any) -> dict:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.POOL_KIND,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {"model": {"name": model}, "routing": {"aliases": aliases or []}, **extra},
    }


def adapter(
    name: str,
    source: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    generation: int = 1,
    **spec: Any,
) -> dict:
    spec.setdefault("pool", "sdxl")
    return {
        "metadata": {"name": name, "namespace": "ns", "generation": generation},
        "spec": {"source": source or {"type": "path", "path": f"/models/loras/{name}.safetensors"}, **spec},
        "status": status or {},
    }


def hub_adapter(name: str, i: int = 0, **spec: Any) -> dict:
    return adapter(
        name,
        {"type": "hub", "repo": f"some-org/{name}-lora-sdxl-v{i}", "filename": "lora.safetensors"},
        {"resolvedRevision": f"{i:040x}", "resolvedGeneration": 1, "resolvedFilename": "lora.safetensors"},
        aliases=[f"{name}-alias"],
        **spec,
    )


def test_pools_endpoints_and_adapters() -> None:
    pods = {"sdxl": [ReadyPod("sdxl-b", "10.0.0.2"), ReadyPod("sdxl-a", "10.0.0.1")]}
    build = build_table(
        [pool("sdxl", aliases=["base"])],
        [
            adapter("pixel", aliases=["px"], scale=0.5, pinned=True),
            adapter("web", {"type": "url", "url": "https://x/y.safetensors", "sha256": "a" * 64}),
        ],
        pods,
    )
    t = build.table
    assert [e.name for e in t.pools["sdxl"].endpoints] == ["sdxl-a", "sdxl-b"]
    assert t.pools["sdxl"].endpoints[0].url == "http://10.0.0.1:8080"
    assert t.pools["sdxl"].aliases == ("base",)
    assert t.adapters["pixel"].aliases == ("px",) and t.adapters["pixel"].pinned and t.adapters["pixel"].scale == 0.5
    assert t.adapters["web"].revision == "a" * 64
    assert t.resolve("px") == ("sdxl", "pixel")
    assert build.routed == {"pixel": "sdxl", "web": "sdxl"}
    assert (t.pools["sdxl"].policy, t.pools["sdxl"].idle_probes) == ("cost", 3)  # the CRD's defaults


def test_routing_policy_reaches_the_table() -> None:
    spec = {"aliases": [], "policy": "rendezvous", "idleProbes": 0, "loadBound": 2}
    t = build_table([{**pool("sdxl"), "spec": {"model": {"name": "m"}, "routing": spec}}], [], {}).table
    assert (t.pools["sdxl"].policy, t.pools["sdxl"].idle_probes, t.pools["sdxl"].load_bound) == ("rendezvous", 0, 2)


def test_hub_adapter_routed_only_once_pinned_for_this_generation() -> None:
    pinned = hub_adapter("papercut")
    stale = hub_adapter("stale")
    stale["metadata"]["generation"] = 2  # spec changed since the pin
    unpinned = adapter("fresh", {"type": "hub", "repo": "org/fresh"})
    build = build_table([pool("sdxl", hubTokenSecret={"name": "hf"})], [pinned, stale, unpinned], {})
    assert set(build.table.adapters) == {"papercut"}
    src = build.table.adapters["papercut"].source
    assert (src.type, src.revision, src.token_env) == ("hub", f"{0:040x}", "HF_TOKEN")


def test_resolution_by_base_model_and_problems() -> None:
    pools = [pool("sdxl"), pool("tiny", model="tiny")]
    build = build_table(
        pools,
        [adapter("a", pool=None, baseModel="TINY"), adapter("b", pool="nope"), adapter("c", baseModel="other/model")],
        {},
    )
    assert build.routed == {"a": "tiny"}
    assert build.problems["b"][0] == "PoolNotFound"
    assert build.problems["c"][0] == "BaseModelMismatch"


def test_name_conflicts_are_resolved_deterministically() -> None:
    pools = [pool("sdxl", aliases=["base"])]
    adapters = [
        adapter("sdxl"),  # a pool's name: not routed
        adapter("zeta", aliases=["shared"]),
        adapter("alpha", aliases=["shared", "base"]),
        adapter("own", aliases=["alpha"]),
    ]  # another adapter's name
    for order in (adapters, list(reversed(adapters))):
        build = build_table(pools, order, {})
        assert set(build.table.adapters) == {"zeta", "alpha", "own"}
        assert build.table.adapters["alpha"].aliases == ("shared",)
        assert build.table.adapters["zeta"].aliases == ()
        assert build.table.adapters["own"].aliases == ()
        assert build.problems["sdxl"][0] == "NameConflict"
        assert {build.problems[n][0] for n in ("zeta", "alpha", "own")} == {"AliasConflict"}


def test_name_problem_agrees_with_assign_names() -> None:
    rng = random.Random(7)
    names = [f"a{i}" for i in range(12)] + ["p1", "Bad_Name"]
    for _ in range(300):
        pools = [PoolInfo("p1", "m1", tuple(rng.sample(["x", "y", "a3"], rng.randint(0, 2))))]
        adapters = {
            n: tuple(rng.sample(names + ["x", "z", "m1"], rng.randint(0, 3)))
            for n in rng.sample(names, rng.randint(1, len(names)))
        }
        verdict = assign_names(pools, adapters)
        owner: dict[str, str] = {}
        for p in pools:
            for n in pool_claims(p):
                owner.setdefault(n, p.name)
        claims: dict[str, list[tuple[str, str]]] = {}
        for n, aliases in adapters.items():
            claims.setdefault(n, []).append((n, "primary"))
            for a in aliases:
                claims.setdefault(a, []).append((n, "alias"))
        for n, aliases in adapters.items():
            got = name_problem(n, aliases, owner, claims)
            want = verdict.problems.get(n)
            assert got == want, (n, adapters, got, want)


def test_resolve_pool_reasons() -> None:
    pools = {"sdxl": PoolInfo("sdxl", "org/sdxl", ("sdxl-base",))}
    assert (
        resolve_pool(
            parse_adapter_spec({"pool": "sdxl", "baseModel": "sdxl-base", "source": {"type": "path", "path": "/x"}}),
            pools,
        ).pool
        == "sdxl"
    )
    r = resolve_pool(parse_adapter_spec({"baseModel": "x/y", "source": {"type": "path", "path": "/x"}}), pools)
    assert (r.pool, r.reason, r.phase) == (None, "NoPoolForBaseModel", "Pending")
    r = resolve_pool(
        parse_adapter_spec({"pool": "sdxl", "baseModel": "x/y", "source": {"type": "path", "path": "/x"}}), pools
    )
    assert (r.reason, r.phase) == ("BaseModelMismatch", "Failed")


def _big_build(n: int) -> Any:
    adapters = [hub_adapter(f"adapter-{'x' * (i % 17)}{i:05d}", i) for i in range(n)]
    pods = {"sdxl": [ReadyPod(f"sdxl-{i}", f"10.0.{i // 250}.{i % 250}") for i in range(50)]}
    return build_table([pool("sdxl", hubTokenSecret={"name": "hf"})], adapters, pods)


def test_ten_thousand_adapters_fit_in_configmaps_and_merge_back() -> None:
    build = _big_build(10_000)
    docs = split_table(build.table)
    assert len(docs) > 1
    for doc in docs:
        assert len(doc.encode()) < CONFIGMAP_LIMIT
    merged = merge_shards(docs)
    assert len(merged.adapters) == 10_000
    assert merged.model_dump()["adapters"] == build.table.model_dump()["adapters"]
    assert merged.pools == build.table.pools
    # Every shard parses on its own as well (pools only in shard 0).
    assert "pools" in json.loads(docs[0]) and all("pools" not in json.loads(d) for d in docs[1:])
    parse_table(docs[0])
    cms = shard_configmaps("ns", docs, [pool("sdxl")])
    for cm in cms:
        size = len(json.dumps(cm).encode())
        assert size < CONFIGMAP_LIMIT, f"{cm['metadata']['name']} is {size} bytes"
        assert cm["metadata"]["labels"][c.LABEL_ROUTING_TABLE] == "true"
        assert set(cm["data"]) == {c.TABLE_DATA_KEY}


def test_same_inputs_same_bytes_in_any_order() -> None:
    a = _big_build(500)
    adapters = [hub_adapter(f"adapter-{'x' * (i % 17)}{i:05d}", i) for i in range(500)]
    random.Random(1).shuffle(adapters)
    pods = {"sdxl": list(reversed([ReadyPod(f"sdxl-{i}", f"10.0.{i // 250}.{i % 250}") for i in range(50)]))}
    b = build_table([pool("sdxl", hubTokenSecret={"name": "hf"})], adapters, pods)
    assert split_table(a.table) == split_table(b.table)


def test_shards_grow_by_doubling_and_hash_is_stable() -> None:
    small = split_table(_big_build(100).table, budget=4096)
    large = split_table(_big_build(400).table, budget=4096)
    assert len(small) & (len(small) - 1) == 0 and len(large) & (len(large) - 1) == 0
    assert len(large) > len(small)
    # Stable across processes and Python versions (not the salted built-in hash()).
    assert stable_hash("pixel") == int.from_bytes(hashlib.sha256(b"pixel").digest()[:8], "big")


def test_endpoint_change_rewrites_only_shard_zero() -> None:
    build = _big_build(3000)
    docs = split_table(build.table, budget=64 * 1024)
    existing = shard_configmaps("ns", docs, [pool("sdxl")])
    adapters = [hub_adapter(f"adapter-{'x' * (i % 17)}{i:05d}", i) for i in range(3000)]
    pods = {"sdxl": [ReadyPod(f"sdxl-{i}", f"10.0.{i // 250}.{i % 250}") for i in range(49)]}
    changed = build_table([pool("sdxl", hubTokenSecret={"name": "hf"})], adapters, pods)
    desired = shard_configmaps("ns", split_table(changed.table, budget=64 * 1024), [pool("sdxl")])
    todo = plan(desired, existing)
    assert [cm["metadata"]["name"] for cm in todo.update] == ["loraplex-routes-0"]
    assert not todo.create and not todo.delete


def test_plan_writes_nothing_when_nothing_changed_and_deletes_extra_shards() -> None:
    docs = split_table(_big_build(50).table)
    cms = shard_configmaps("ns", docs, [pool("sdxl")])
    assert plan(cms, json.loads(json.dumps(cms))).empty
    extra = dict(json.loads(json.dumps(cms[0])), metadata={"name": "loraplex-routes-7"})
    todo = plan(cms, [*cms, extra])
    assert todo.delete == ("loraplex-routes-7",) and not todo.update and not todo.create
    assert plan([], cms).delete == tuple(cm["metadata"]["name"] for cm in cms)


@pytest.mark.parametrize("owners", [[], ["b", "a"]])
def test_configmaps_are_owned_by_every_pool(owners: list[str]) -> None:
    cms = shard_configmaps("ns", ['{"version":1}'], [pool(n) for n in owners])
    refs = cms[0]["metadata"]["ownerReferences"]
    assert [r["name"] for r in refs] == sorted(owners)
    assert all(r["controller"] is False for r in refs)


def test_adapter_snapshots_route_exactly_like_full_objects() -> None:
    from loraplex_operator.controllers.stores import adapter_snapshot

    full = [hub_adapter("papercut"), adapter("pixel", aliases=["px"]), adapter("gone")]
    full[0]["status"].update({"phase": "Ready", "conditions": [{"type": "Ready"}], "requestRate": 1.0})
    full[0]["metadata"]["annotations"] = {"operator.loraplex.io/x": "{}"}
    full[2]["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    pools = [pool("sdxl", hubTokenSecret={"name": "hf"})]
    a = build_table(pools, full, {})
    b = build_table(pools, [adapter_snapshot(x) for x in full], {})
    assert split_table(a.table) == split_table(b.table)
    assert set(b.table.adapters) == {"papercut", "pixel"}
