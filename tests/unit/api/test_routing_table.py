"""Routing table parsing, name resolution, shard merging and deterministic dumps."""

from __future__ import annotations

import json

import pytest

from loraplex.api.routing_table import TableError, dump_table, merge_shards, parse_table


def doc() -> dict:
    return {
        "version": 1,
        "generation": 4,
        "pools": {
            "sdxl": {
                "baseModel": "stabilityai/sdxl-base-1.0",
                "aliases": ["sdxl-base"],
                "endpoints": [
                    {"name": "sdxl-0", "url": "http://10.0.0.1:8080"},
                    {"name": "sdxl-1", "url": "http://10.0.0.2:8080", "ready": False},
                ],
                "loadBound": 1.5,
            },
            "tiny": {"baseModel": "tiny", "activationTimeoutSeconds": 30},
        },
        "adapters": {
            "pixel-art": {
                "pool": "sdxl",
                "source": {"type": "hub", "repo": "acme/pixel", "revision": "abc"},
                "aliases": ["pixel"],
                "scale": 0.8,
                "replication": 2,
            },
            "sketch": {
                "pool": "sdxl",
                "source": {"type": "url", "url": "https://x.test/s.safetensors", "sha256": "a" * 64},
            },
            "local": {"pool": "tiny", "source": {"type": "path", "path": "/data/l.safetensors"}, "pinned": True},
        },
    }


def test_parse_and_resolve() -> None:
    t = parse_table(json.dumps(doc()))
    assert t.generation == 4
    assert t.resolve("pixel-art") == ("sdxl", "pixel-art")
    assert t.resolve("pixel") == ("sdxl", "pixel-art")
    assert t.resolve("sdxl") == ("sdxl", None)
    assert t.resolve("sdxl-base") == ("sdxl", None)
    assert t.resolve("stabilityai/sdxl-base-1.0") == ("sdxl", None)
    assert t.resolve("local") == ("tiny", "local")
    with pytest.raises(KeyError):
        t.resolve("nope")
    pool = t.pools["sdxl"]
    assert pool.load_bound == 1.5 and [e.ready for e in pool.endpoints] == [True, False]
    assert t.pools["tiny"].activation_timeout_s == 30
    assert t.adapters["pixel-art"].replication == 2


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["adapters"]["sketch"].update(scale="big"), "adapters.sketch.scale"),
        (lambda d: d["adapters"]["sketch"].update(pool="nope"), "adapters.sketch.pool"),
        (lambda d: d["adapters"]["sketch"]["source"].update(url="ftp://x"), "adapters.sketch.source.url.url"),
        (lambda d: d["adapters"]["sketch"]["source"].update(type="s3"), "adapters.sketch.source"),
        (lambda d: d["adapters"]["pixel-art"].update(replication=0), "adapters.pixel-art.replication"),
        (lambda d: d["adapters"]["pixel-art"].update(colour="red"), "adapters.pixel-art.colour"),
        (lambda d: d["pools"]["sdxl"]["endpoints"][0].pop("url"), "pools.sdxl.endpoints.0.url"),
        (lambda d: d["pools"]["sdxl"].update(loadBound=0.5), "pools.sdxl.loadBound"),
        (lambda d: d["pools"]["sdxl"].update(policy="random"), "pools.sdxl.policy"),
        (lambda d: d["pools"]["sdxl"].update(idleProbes=-1), "pools.sdxl.idleProbes"),
        (lambda d: d.update(version=2), "version"),
    ],
)
def test_parse_errors_name_the_field(mutate, field: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(TableError) as e:
        parse_table(d)
    assert field in str(e.value)


@pytest.mark.parametrize("raw", ["{not json", b"\xff\xfe", "[]", "3"])
def test_not_a_json_object(raw) -> None:
    with pytest.raises(TableError):
        parse_table(raw)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["adapters"]["sketch"].update(aliases=["pixel"]), "'pixel' already used by adapter pixel-art"),
        (lambda d: d["adapters"]["sketch"].update(aliases=["sdxl-base"]), "already used by pool sdxl"),
        (lambda d: d["adapters"]["sketch"].update(aliases=["tiny"]), "already used by pool tiny"),
        (lambda d: d["adapters"]["sketch"].update(aliases=["stabilityai/sdxl-base-1.0"]), "base model of pool sdxl"),
        (lambda d: d["pools"]["tiny"].update(aliases=["sdxl-base"]), "already used by pool sdxl"),
        (
            lambda d: d["pools"]["tiny"].update(
                endpoints=[{"name": "t", "url": "http://a"}, {"name": "t", "url": "http://b"}]
            ),
            "duplicate endpoint name 't'",
        ),
    ],
)
def test_aliases_and_names_collide(mutate, needle: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(TableError) as e:
        parse_table(d)
    assert needle in str(e.value)


def test_pools_may_share_a_base_model_first_by_name_wins() -> None:
    d = doc()
    d["pools"]["a-sdxl-h100"] = {"baseModel": "stabilityai/sdxl-base-1.0"}
    assert parse_table(d).resolve("stabilityai/sdxl-base-1.0") == ("a-sdxl-h100", None)
    reordered = {"pools": dict(reversed(list(d["pools"].items()))), "adapters": d["adapters"]}
    assert parse_table(reordered).resolve("stabilityai/sdxl-base-1.0") == ("a-sdxl-h100", None)


def test_dump_is_deterministic_and_round_trips() -> None:
    t = parse_table(doc())
    d2 = doc()
    d2["adapters"] = dict(reversed(list(d2["adapters"].items())))
    d2["pools"] = dict(reversed(list(d2["pools"].items())))
    assert dump_table(t) == dump_table(parse_table(d2))
    again = parse_table(dump_table(t))
    assert again == t
    assert dump_table(again) == dump_table(t)
    # The default routing policy is left out, so a table an older sidecar can read stays one (extra fields refused).
    assert "policy" not in json.loads(dump_table(t))["pools"]["sdxl"]
    d = doc()
    d["pools"]["sdxl"]["policy"] = "rendezvous"
    assert "rendezvous" in dump_table(parse_table(d))
    # A default-typed (hub) source keeps its discriminator in the dump.
    assert json.loads(dump_table(t))["adapters"]["pixel-art"]["source"]["type"] == "hub"


def test_merge_shards_joins_partial_tables() -> None:
    d = doc()
    pools_shard = {"version": 1, "generation": 2, "pools": d["pools"]}
    a = {"generation": 4, "adapters": {"pixel-art": d["adapters"]["pixel-art"]}}
    b = json.dumps({"generation": 3, "adapters": {k: v for k, v in d["adapters"].items() if k != "pixel-art"}})
    merged = merge_shards([pools_shard, a, b.encode()])
    assert merged == parse_table(d)
    assert merged.generation == 4
    assert merge_shards([]).pools == {}


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("{oops", "shard 1 is not valid JSON"),
        ([1], "shard 1 must be a JSON object"),
        ({"version": 9}, "shard 1: version"),
        ({"generation": "x"}, "shard 1: generation"),
        ({"adapters": []}, "shard 1: adapters"),
        ({"adapters": {"orphan": {"pool": "ghost", "source": {"type": "path", "path": "/x"}}}}, "adapters.orphan.pool"),
    ],
)
def test_merge_shards_rejects_any_bad_shard(bad, needle: str) -> None:
    with pytest.raises(TableError) as e:
        merge_shards([{"pools": doc()["pools"]}, bad])
    assert needle in str(e.value)


def test_shard_merger_reparses_only_changed_shards_and_still_checks_the_whole(monkeypatch) -> None:
    import loraplex.api.routing_table as rt

    d = doc()
    pools = json.dumps({"version": 1, "generation": 2, "pools": d["pools"]})
    a = json.dumps({"generation": 4, "adapters": {"pixel-art": d["adapters"]["pixel-art"]}})
    b = json.dumps({"generation": 3, "adapters": {k: v for k, v in d["adapters"].items() if k != "pixel-art"}})
    parsed: list[int] = []
    real = rt._parse_shard
    monkeypatch.setattr(rt, "_parse_shard", lambda shard, i: parsed.append(i) or real(shard, i))
    merger = rt.ShardMerger()
    assert merger.merge([pools, a, b]) == parse_table(d)
    assert parsed == [0, 1, 2]
    # One shard changes: only it is parsed again, and the result is the same as a fresh merge.
    b2 = json.dumps({"adapters": {"sketch": d["adapters"]["sketch"]}})
    fresh = merge_shards([pools, a, b2])
    del parsed[:]
    assert merger.merge([pools, a, b2]) == fresh
    assert parsed == [2]
    # A shard that names another shard's adapter again is still refused (the whole table is checked),
    # though every shard in it was parsed before; and the reader keeps nothing of the refused merge.
    clash = json.dumps({"adapters": {"other": {**d["adapters"]["sketch"], "aliases": ["pixel"]}}})
    with pytest.raises(TableError, match="pixel"):
        merger.merge([pools, a, clash])
    with pytest.raises(TableError, match="shard 1: adapters.x.source"):
        bad = {"adapters": {"x": {"pool": "tiny", "source": {"type": "url", "url": "ftp:"}}}}
        merger.merge([pools, json.dumps(bad)])


def test_shard_merger_fast_check_agrees_with_full_validation() -> None:
    import loraplex.api.routing_table as rt

    d = doc()
    pools = json.dumps({"version": 1, "generation": 2, "pools": d["pools"]})
    a = json.dumps({"adapters": {"pixel-art": d["adapters"]["pixel-art"]}})
    b = json.dumps({"adapters": {k: v for k, v in d["adapters"].items() if k != "pixel-art"}})
    merger = rt.ShardMerger()
    merged = merger.merge([pools, a, b])
    full = parse_table(d)
    # The merger's name index (built from the shards' own) resolves every name as the full table's does.
    for name in ("pixel-art", "pixel", "sketch", "local", "sdxl", "sdxl-base", "stabilityai/sdxl-base-1.0", "tiny"):
        assert merged.resolve(name) == full.resolve(name)
    with pytest.raises(KeyError):
        merged.resolve("nope")
    # Each rule the fast check skips on is still enforced, by the full validation, naming the field.
    for shards, needle in [
        # an adapter named like another shard's pool base model
        ([pools, json.dumps({"adapters": {"tiny": d["adapters"]["local"]}})], "adapters.tiny"),
        # an alias clashing with an adapter in another shard
        ([pools, a, json.dumps({"adapters": {"x": {**d["adapters"]["local"], "aliases": ["pixel-art"]}}})], "pixel"),
        # an unknown pool
        ([pools, json.dumps({"adapters": {"y": {**d["adapters"]["local"], "pool": "ghost"}}})], "adapters.y.pool"),
        # a pool alias used twice
        ([json.dumps({"pools": {"p": {"aliases": ["q"]}, "q": {}}})], "pools.q"),
    ]:
        with pytest.raises(TableError, match=needle):
            merger.merge(shards)
    # The same adapter in two shards is one entry (the later shard's), as a plain join gives.
    again = merger.merge([pools, a, b, a])
    assert (again.adapters, again.pools) == (full.adapters, full.pools)
    assert again.resolve("pixel") == ("sdxl", "pixel-art")
