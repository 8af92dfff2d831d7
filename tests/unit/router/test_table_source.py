"""Table sources: file hot reload, last good table on a bad write, ConfigMap shard bookkeeping."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from kubernetes.client import V1ConfigMap, V1ObjectMeta

from inference_pod.router.table_source import AsyncTable, ConfigMapTableSource, FileTableSource


def table(gen: int, adapters: tuple[str, ...] = ("a",)) -> dict:
    return {
        "version": 1,
        "generation": gen,
        "pools": {"tiny": {"baseModel": "tiny", "endpoints": [{"name": "p0", "url": "http://127.0.0.1:1"}]}},
        "adapters": {n: {"pool": "tiny", "source": {"type": "path", "path": f"/x/{n}"}} for n in adapters},
    }


def write(path: Path, content: str) -> None:
    # Bump the mtime explicitly: two writes within the filesystem's clock tick must still be seen.
    path.write_text(content)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_file_source_reload_and_last_good(tmp_path: Path) -> None:
    p = tmp_path / "table.json"
    write(p, json.dumps(table(1)))
    src = FileTableSource(p)
    seen, errors = [], []
    src.add_listener(lambda t: seen.append(t.generation))
    src.add_error_listener(errors.append)
    assert src.poll() and src.table.generation == 1
    assert not src.poll()  # unchanged file: no reload
    write(p, json.dumps(table(2, ("a", "b"))))
    assert src.poll() and src.table.resolve("b") == ("tiny", "b")
    write(p, '{"version": 1, "adapters": {"c": {"pool": "ghost"')
    assert not src.poll()
    assert src.table.generation == 2 and "not valid JSON" in errors[-1]
    write(p, json.dumps(table(3, ("a",)) | {"pools": {}}))
    assert not src.poll() and "unknown pool" in errors[-1]
    assert src.table.generation == 2
    assert seen == [1, 2]


def test_file_source_missing_then_created(tmp_path: Path) -> None:
    p = tmp_path / "later.json"
    src = FileTableSource(p, poll_interval=0.05)
    src.start()
    try:
        assert src.table is None and not src.wait_loaded(0.1)
        write(p, json.dumps(table(5)))
        assert src.wait_loaded(5) and src.table.generation == 5
    finally:
        src.stop()


def cm(name: str, doc: dict | str | None, marked_empty: bool = False) -> V1ConfigMap:
    data = None if doc is None else {"table.json": doc if isinstance(doc, str) else json.dumps(doc)}
    annotations = {"loraplex.io/table-empty": "true"} if marked_empty else None
    return V1ConfigMap(metadata=V1ObjectMeta(name=name, annotations=annotations), data=data)


def test_configmap_shards_merge_and_keep_last_good() -> None:
    src = ConfigMapTableSource("ns", api=object())
    errors = []
    src.add_error_listener(errors.append)
    full = table(3, ("a", "b"))
    pools = {"generation": 3, "pools": full["pools"]}
    shard_a = {"generation": 2, "adapters": {"a": full["adapters"]["a"]}}
    src.replace_all([cm("rt-0", pools), cm("rt-1", shard_a)])
    assert src.table.generation == 3 and set(src.table.adapters) == {"a"}
    # A new shard arrives, an unchanged MODIFIED is a no-op, a deleted one disappears.
    assert src.apply_event("ADDED", cm("rt-2", {"adapters": {"b": full["adapters"]["b"]}}))
    assert not src.apply_event("MODIFIED", cm("rt-1", shard_a))
    assert src.merge() and set(src.table.adapters) == {"a", "b"}
    assert src.apply_event("MODIFIED", cm("rt-2", "{broken"))
    assert not src.merge() and set(src.table.adapters) == {"a", "b"}
    assert "shard 2 is not valid JSON" in errors[-1] and "rt-2" in errors[-1]
    assert src.apply_event("MODIFIED", cm("rt-3", None))
    assert not src.merge() and "rt-3" in errors[-1]
    assert src.apply_event("DELETED", cm("rt-3", None)) and src.apply_event("DELETED", cm("rt-2", None))
    assert not src.apply_event("DELETED", cm("rt-2", None))
    assert src.merge() and set(src.table.adapters) == {"a"}
    assert not src.merge()  # same shards: nothing to publish


def test_configmap_no_shards_is_an_empty_table() -> None:
    src = ConfigMapTableSource("ns", api=object())
    src.replace_all([])
    assert src.wait_loaded(0) and src.table.pools == {}


EMPTY = {"version": 1, "generation": 7, "pools": {}, "adapters": {}}


def test_an_unexplained_drop_to_an_empty_table_is_refused() -> None:
    src = ConfigMapTableSource("ns", api=object())
    errors: list[str] = []
    src.add_error_listener(errors.append)
    src.replace_all([cm("rt-0", table(3, ("a", "b")))])
    assert set(src.table.adapters) == {"a", "b"}
    # Every shard deleted by hand: keep the last good table, and say so (error listeners feed the metrics).
    assert src.apply_event("DELETED", cm("rt-0", None))
    assert not src.merge() and set(src.table.adapters) == {"a", "b"}
    assert src.refused_empty == 1 and "empty table" in errors[-1]
    # A valid but empty table written by hand: refused too.
    assert src.apply_event("ADDED", cm("rt-0", EMPTY))
    assert not src.merge() and set(src.table.adapters) == {"a", "b"} and src.refused_empty == 2
    # The operator restores the shard: routed again.
    assert src.apply_event("MODIFIED", cm("rt-0", table(4, ("a", "b"))))
    assert src.merge() and src.table.generation == 4
    # A re-list that finds nothing (label removed from every shard while the watch was down): refused.
    src.replace_all([])
    assert src.table.generation == 4 and src.refused_empty == 3


def test_an_empty_table_marked_by_the_operator_is_accepted() -> None:
    src = ConfigMapTableSource("ns", api=object())
    src.replace_all([cm("rt-0", table(3))])
    # Only the marker changes (same data as a refused empty shard before): that is a change too.
    assert src.apply_event("MODIFIED", cm("rt-0", EMPTY))
    assert not src.merge()
    assert src.apply_event("MODIFIED", cm("rt-0", EMPTY, marked_empty=True))
    assert src.merge() and src.table.generation == 7 and not src.table.adapters and not src.table.pools
    assert src.refused_empty == 1
    # From empty, anything goes (nothing to protect).
    src.replace_all([])
    assert src.table.generation == 0


def test_async_table_wakes_waiters(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    write(p, json.dumps(table(1)))
    src = FileTableSource(p, poll_interval=0.05)
    src.start()

    async def main() -> None:
        view = AsyncTable(src, asyncio.get_running_loop())
        assert view.table.generation == 1
        assert not await view.wait_changed(0.2)
        waiter = asyncio.ensure_future(view.wait_changed(5))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        write(p, json.dumps(table(2)))
        assert await waiter
        assert view.table.generation == 2 and time.monotonic() - t0 < 2

    try:
        asyncio.run(main())
    finally:
        src.stop()


@pytest.mark.parametrize("content", ["", "null", "{"])
def test_file_source_first_load_malformed(tmp_path: Path, content: str) -> None:
    p = tmp_path / "t.json"
    write(p, content)
    src = FileTableSource(p)
    assert not src.poll() and src.table is None and src.last_error
