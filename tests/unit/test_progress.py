"""Progress lines: the wording, the rate limit, a directory watched while it grows, a real URL download."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from inference_pod.adapters.sources import SourcePolicy, _download_url
from loraplex import progress
from loraplex.api.routing_table import UrlSource
from loraplex.progress import DirectoryProgress, Progress, format_progress, human_bytes
from tests.helpers.trickle_server import TrickleServer


def test_format_progress() -> None:
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(3 << 30) == "3.0 GiB"
    line = format_progress("model x", 12 << 20, 24 << 20, 10.0)
    assert line == "model x: 12.0 MiB of 24.0 MiB (50%), 1.2 MiB/s, 10s, about 10s left"
    assert format_progress("model x", 5 << 20, None, 5.0) == "model x: 5.0 MiB so far, 1.0 MiB/s, 5s"
    assert format_progress("m", 0, 100, 0.0) == "m: 0 B of 100 B (0%), -, 0s"
    assert format_progress("m", 4 << 20, 4 << 20, 2.0, finished=True) == "m: 4.0 MiB in 2s (2.0 MiB/s), done"


def test_progress_is_rate_limited_and_quiet_when_quick() -> None:
    t = [0.0]
    lines: list[str] = []
    p = Progress("x", total=1000, interval_s=10, emit=lines.append, clock=lambda: t[0])
    for step in range(1, 101):  # 100 updates over 25 s: a line at 10 s and 20 s only
        t[0] = step * 0.25
        p.update(step * 10)
    p.finish(1000)
    assert len(lines) == 3 and lines[0].startswith("x: 400 B of 1000 B (40%)") and lines[-1].endswith("done")
    quick: list[str] = []
    q = Progress("y", emit=quick.append, clock=lambda: 0.0)
    q.update(10)
    q.finish(10)
    assert quick == []


def test_directory_progress_logs_while_it_grows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="loraplex.progress")
    (tmp_path / "old").write_bytes(b"x" * 100)  # what was there before is not counted

    def grow() -> None:
        with open(tmp_path / "blob.incomplete", "wb") as f:
            for _ in range(6):
                f.write(b"y" * 4096)
                f.flush()
                time.sleep(0.1)

    with DirectoryProgress(tmp_path, "model m", interval_s=0.1):
        writer = threading.Thread(target=grow)
        writer.start()
        writer.join()
        time.sleep(0.25)
    lines = [r.getMessage() for r in caplog.records if r.name == "loraplex.progress"]
    assert any("so far" in ln for ln in lines), lines
    assert lines[-1].startswith("model m: 24.0 KiB in ") and lines[-1].endswith("done"), lines


def test_url_download_logs_its_progress(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="loraplex.progress")
    monkeypatch.setattr(progress, "DEFAULT_INTERVAL_S", 0.1)
    payload = bytes(range(256)) * 8  # 2 KiB in 8 pieces, 0.05 s apart
    policy = SourcePolicy(allow_private=True, min_bytes_per_s=1)
    with TrickleServer(payload, delay=0.05, piece=256) as srv:
        _download_url(UrlSource(url=srv.url + "/slow/a.safetensors?token=hidden"), tmp_path / "a", 1 << 20, policy)
    assert (tmp_path / "a").read_bytes() == payload
    lines = [r.getMessage() for r in caplog.records if r.name == "loraplex.progress"]
    assert len(lines) >= 2 and " of 2.0 KiB (" in lines[0], lines
    assert lines[-1].endswith("done") and "2.0 KiB in" in lines[-1], lines
    assert all("hidden" not in ln for ln in lines)  # the query string is redacted like in errors
