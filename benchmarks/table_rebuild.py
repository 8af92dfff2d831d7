"""Routing-table costs at 2,000 to 30,000 adapters, in process: the operator's rebuild and a sidecar's reload.

    python benchmarks/table_rebuild.py [--adapters 2000,10000,30000] [--runs 5]

Operator: one flush = build_table + split_table. Baseline: without memos
(every adapter's spec, source checks, models and JSON again, as before
issue 11); memo: the same flush when one adapter changed since the last
one (BuildMemo and SplitMemo, as the table writer keeps them).

Sidecar: one reload = the table from its shards. Baseline: the stdlib JSON
parse of every shard and one validation of the merged document (the
sidecar before issue 11); ShardMerger: the first load (every shard parsed,
pydantic's own JSON parser) and a reload after one shard changed (only it
is parsed again; the whole table is still checked).

Medians of `--runs`, ratios against the baseline measured in the same run.
The bytes are checked equal between the two operator paths.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from benchmarks.operator_burst import adapter_body  # noqa: E402
from loraplex.api.routing_table import SCHEMA_VERSION, RoutingTable, ShardMerger  # noqa: E402
from loraplex_operator import constants as c  # noqa: E402
from loraplex_operator.logic.routes import BuildMemo, build_table  # noqa: E402
from loraplex_operator.logic.shards import SplitMemo, split_table  # noqa: E402

POOL = {
    "apiVersion": c.API_VERSION,
    "kind": c.POOL_KIND,
    "metadata": {"name": "scale", "namespace": "ns", "uid": "uid-scale"},
    "spec": {"model": {"name": "tiny"}, "replicas": 0, "minReplicas": 0, "maxReplicas": 1},
}


def median_s(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def legacy_merge(shards: list[str]) -> RoutingTable:
    """The sidecar's merge before issue 11: json.loads every shard, validate the merged document."""
    pools: dict[str, Any] = {}
    adapters: dict[str, Any] = {}
    generation = 0
    for shard in shards:
        doc = json.loads(shard)
        generation = max(generation, doc.get("generation", 0))
        pools.update(doc.get("pools", {}))
        adapters.update(doc.get("adapters", {}))
    doc = {"version": SCHEMA_VERSION, "generation": generation, "pools": pools, "adapters": adapters}
    return RoutingTable.model_validate(doc)


def measure(n: int, runs: int) -> dict[str, float]:
    adapters = []
    for i in range(n):
        body = adapter_body("ns", f"scale-{i:05d}", "scale")
        body["metadata"]["generation"] = 1
        adapters.append(body)

    def flush_plain() -> list[str]:
        return split_table(build_table([POOL], adapters, {}).table)

    build_memo, split_memo = BuildMemo(), SplitMemo()
    docs = split_table(build_table([POOL], adapters, {}, memo=build_memo).table, memo=split_memo)
    k = [0]

    def flush_memo() -> list[str]:
        # One adapter changed since the last flush (kopf's index holds a new snapshot for it).
        k[0] += 1
        changed = copy.deepcopy(adapters[k[0] % n])
        changed["spec"]["scale"] = 1.0 - (k[0] % 2) * 0.5
        adapters[k[0] % n] = changed
        return split_table(build_table([POOL], adapters, {}, memo=build_memo).table, memo=split_memo)

    out: dict[str, float] = {"adapters": n, "shards": len(docs), "bytes": sum(len(d) for d in docs)}
    out["flush_plain_s"] = median_s(flush_plain, runs)
    out["flush_memo_s"] = median_s(flush_memo, runs)
    assert flush_memo() == flush_plain(), "the memo changed the bytes"

    merger = ShardMerger()
    merger.merge(docs)
    j = [0]

    def reload_one() -> None:
        j[0] += 1
        edited = list(docs)
        edited[-1] = docs[-1] + " " * j[0]  # the same JSON, new bytes: that shard is parsed again
        merger.merge(edited)

    out["reload_legacy_s"] = median_s(lambda: legacy_merge(docs), runs)
    out["reload_first_s"] = median_s(lambda: ShardMerger().merge(docs), runs)
    out["reload_one_shard_s"] = median_s(reload_one, runs)
    return out


def report(rows: list[dict[str, float]]) -> str:
    lines = [
        "| adapters | shards (bytes) | operator flush: no memo | memo, 1 changed | ratio "
        "| sidecar reload: before | first load | 1 shard changed | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {int(r['adapters']):,} | {int(r['shards'])} ({int(r['bytes']):,}) "
            f"| {r['flush_plain_s'] * 1000:.0f} ms | {r['flush_memo_s'] * 1000:.0f} ms "
            f"| {r['flush_plain_s'] / r['flush_memo_s']:.1f}x "
            f"| {r['reload_legacy_s'] * 1000:.0f} ms | {r['reload_first_s'] * 1000:.0f} ms "
            f"| {r['reload_one_shard_s'] * 1000:.0f} ms | {r['reload_legacy_s'] / r['reload_one_shard_s']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", default="2000,10000,30000")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args(argv)
    rows = [measure(int(n), a.runs) for n in a.adapters.split(",")]
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
