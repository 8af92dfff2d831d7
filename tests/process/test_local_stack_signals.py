"""`loraplex local --serve` stops its worker and sidecar on SIGTERM and SIGHUP (issue #10: they were orphaned)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.procs import PYTHON, REPO_ROOT

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out |= {int(c) for c in (task / "children").read_text().split()}
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_local_serve_stops_its_children_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    log = open(tmp_path / "local.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [PYTHON, "-m", "loraplex", "local", "--serve", "--workdir", str(tmp_path / "w"), "--steps", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        while b"serving:" not in (tmp_path / "local.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "local.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "local.log").read_text()[-3000:]
            time.sleep(0.5)
        kids = children(proc.pid)
        assert len(kids) == 2, kids  # worker and sidecar
        os.kill(proc.pid, sig)  # the parent only, as a supervisor or a closed terminal would
        proc.wait(30)
        deadline = time.monotonic() + 20
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [k for k in kids if alive(k)], "worker/sidecar left running"
    finally:
        for k in kids:
            if alive(k):
                os.killpg(k, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
