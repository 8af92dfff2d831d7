"""The worker's --table file is checked at most once a second, not stat()ed on every request (issue #10)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

from inference_pod.worker.config import WorkerConfig
from inference_pod.worker.server import Worker


def test_table_is_checked_at_most_once_a_second(tmp_path: Path) -> None:
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"version": 1, "pools": {"tiny": {"baseModel": "tiny"}}, "adapters": {}}))
    worker = Worker(WorkerConfig(table=table))
    worker.tiers = mock.Mock()
    worker.reload_table(force=True)
    with mock.patch.object(Path, "stat", side_effect=AssertionError("stat on a request")):
        for _ in range(100):
            worker.reload_table()
    worker._table_checked -= 2  # a second later
    with mock.patch.object(Path, "stat", wraps=table.stat) as stat:
        worker.reload_table()
    assert stat.call_count == 1
