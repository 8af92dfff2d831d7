"""The table writer's rebuild at scale: memos that reuse unchanged adapters' work, and flush spacing (pure)."""

from __future__ import annotations

import copy
import json

from loraplex_operator.logic.flushing import flush_due
from loraplex_operator.logic.routes import BuildMemo, build_table
from loraplex_operator.logic.shards import SplitMemo, _canonical, split_table
from tests.unit.operator.test_operator_routes import adapter, hub_adapter, pool


def url_adapter(name: str, host: str = "loras.example.com") -> dict:
    return adapter(name, {"type": "url", "url": f"https://{host}/{name}.safetensors", "sha256": "a" * 64})


def fleet(n: int) -> list[dict]:
    return [
        hub_adapter(f"h{i:04d}", i) if i % 3 == 0 else url_adapter(f"u{i:04d}") if i % 3 == 1 else adapter(f"p{i:04d}")
        for i in range(n)
    ]


def test_a_memo_reuses_unchanged_adapters_and_builds_the_same_table() -> None:
    pools, adapters = [pool("sdxl", hubTokenSecret={"name": "hf"})], fleet(300)
    memo = BuildMemo()
    first = build_table(pools, adapters, {}, memo=memo)
    assert memo.hits == 0 and first.table == build_table(pools, adapters, {}).table
    again = build_table(pools, adapters, {}, memo=memo)
    assert memo.hits == 300 and again.table == first.table
    # The same entry objects: the split memo then reuses their text by identity.
    assert all(again.table.adapters[n] is first.table.adapters[n] for n in first.table.adapters)


def test_a_changed_adapter_is_a_new_body_and_is_rebuilt() -> None:
    pools, adapters = [pool("sdxl")], fleet(30)
    memo = BuildMemo()
    build_table(pools, adapters, {}, memo=memo)
    changed = copy.deepcopy(adapters[1])  # kopf's index replaces the snapshot of a changed adapter
    changed["spec"]["scale"] = 0.25
    changed["metadata"]["generation"] = 2
    adapters = [*adapters[:1], changed, *adapters[2:]]
    after = build_table(pools, adapters, {}, memo=memo)
    assert after.table.adapters["u0001"].scale == 0.25
    assert after.table == build_table(pools, adapters, {}).table
    # Demand changes an entry too (its homes), though the body is the same object.
    busy = build_table(pools, adapters, {}, {"u0001": 3}, memo=memo)
    assert busy.table.adapters["u0001"].replication == 3


def test_the_pool_policy_is_part_of_the_memo() -> None:
    adapters = [url_adapter("inside", host="10.1.2.3"), url_adapter("outside")]
    memo = BuildMemo()
    strict = build_table([pool("sdxl")], adapters, {}, memo=memo)
    assert set(strict.table.adapters) == {"outside"}
    relaxed = build_table([pool("sdxl", adapterSources={"allowPrivateUrls": True})], adapters, {}, memo=memo)
    assert set(relaxed.table.adapters) == {"inside", "outside"}
    strict_again = build_table([pool("sdxl")], adapters, {}, memo=memo)
    assert set(strict_again.table.adapters) == {"outside"}


def test_split_shards_are_canonical_json_and_the_same_with_or_without_a_memo() -> None:
    pools = [pool("sdxl", aliases=["bäse"], hubTokenSecret={"name": "hf"})]
    adapters = fleet(400) + [adapter("ünicode", aliases=["ålias"])]
    table = build_table(pools, adapters, {}).table
    plain = split_table(table, budget=8192)
    assert len(plain) > 4
    for doc in plain:  # what the operator always wrote: sorted keys, compact, non-ASCII as is
        assert doc == _canonical(json.loads(doc))
    memo = SplitMemo()
    assert split_table(table, budget=8192, memo=memo) == plain
    assert split_table(table, budget=8192, memo=memo) == plain
    # One entry changes: the memo's output is a fresh split's.
    bumped = build_table(pools, adapters, {}, {"p0002": 4}).table
    assert split_table(bumped, budget=8192, memo=memo) == split_table(bumped, budget=8192) != plain


def test_flushes_are_coalesced_and_spaced_by_their_own_cost() -> None:
    due = dict(debounce_s=0.5, max_delay_s=3.0, min_interval_s=1.0)
    # Quiet after one mark: half a second later.
    assert flush_due(10.0, 10.0, 10.0, 0.0, 0.1, **due) == 10.5
    # Marks keep coming: at most max_delay after the first.
    assert flush_due(12.8, 10.0, 12.8, 0.0, 0.1, **due) == 13.0
    # A cheap last flush: the minimum interval applies.
    assert flush_due(10.0, 10.0, 10.0, 9.8, 0.1, **due) == 10.8
    # An expensive one (4 s at tens of thousands of adapters): the next waits twice that after it.
    assert flush_due(10.0, 10.0, 10.0, 9.8, 4.0, **due) == 17.8
    assert flush_due(10.0, 10.0, 10.0, 9.8, 4.0, cost_factor=1.0, **due) == 13.8
    # Long quiet, long since the last flush: due already (the writer flushes at once).
    assert flush_due(5.0, None, 0.0, 0.0, 0.0, **due) <= 5.0
