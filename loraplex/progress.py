"""Progress lines for long transfers: what, how much of how much, how fast; at a bounded rate.

    p = Progress("adapter ink from https://host/ink.safetensors", total=24_000_000)
    for chunk in chunks:
        done += len(chunk); p.update(done)      # logs at most once per interval_s
    p.finish(done)                               # one closing line, only if it logged before

`format_progress` is the pure part. `DirectoryProgress` watches a directory
grow (the HF cache while diffusers downloads a base model, where the bytes
are not ours to count) from a thread, with the same lines. A transfer that
ends within the first interval logs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

log = logging.getLogger("loraplex.progress")
DEFAULT_INTERVAL_S = 10.0


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_progress(what: str, done: int, total: int | None, elapsed_s: float, finished: bool = False) -> str:
    """'what: 12.0 MiB of 24.0 MiB (50%), 1.2 MiB/s, 10s' (no total: '12.0 MiB so far'); `finished`: '... done'."""
    rate = f"{human_bytes(done / elapsed_s)}/s" if elapsed_s > 0 else "-"
    if finished:
        return f"{what}: {human_bytes(done)} in {elapsed_s:.0f}s ({rate}), done"
    if total:
        pct = min(100.0, 100.0 * done / total)
        amount = f"{human_bytes(done)} of {human_bytes(total)} ({pct:.0f}%)"
        left = f", about {(total - done) / (done / elapsed_s):.0f}s left" if done and elapsed_s > 0 else ""
    else:
        amount, left = f"{human_bytes(done)} so far", ""
    return f"{what}: {amount}, {rate}, {elapsed_s:.0f}s{left}"


class Progress:
    """Rate-limited progress of one transfer; `emit` gets each line (default: an INFO log line)."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        interval_s: float | None = None,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total = what, total
        self.interval_s = DEFAULT_INTERVAL_S if interval_s is None else interval_s
        self.emit = emit or log.info
        self.clock = clock
        self._t0 = self._last = clock()
        self.lines = 0

    def update(self, done: int) -> None:
        now = self.clock()
        if now - self._last >= self.interval_s:
            self._last = now
            self.lines += 1
            self.emit(format_progress(self.what, done, self.total, now - self._t0))

    def finish(self, done: int) -> None:
        if self.lines:
            self.emit(format_progress(self.what, done, self.total, self.clock() - self._t0, finished=True))


def directory_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (symlinks not followed; 0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # renamed or removed while we walk: the download moves files into place
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


class DirectoryProgress:
    """While the `with` block runs, log how `path` grows every `interval_s` (only while it grows)."""

    def __init__(self, path: Path, what: str, interval_s: float | None = None) -> None:
        self.path = path
        self.interval_s = DEFAULT_INTERVAL_S if interval_s is None else interval_s
        self._start = directory_bytes(path)
        self.progress = Progress(what, interval_s=0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._seen = self._start

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            grown = directory_bytes(self.path) - self._start
            if grown > self._seen - self._start:
                self._seen = self._start + grown
                self.progress.update(grown)

    def __enter__(self) -> DirectoryProgress:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        if exc is None:
            self.progress.finish(directory_bytes(self.path) - self._start)
