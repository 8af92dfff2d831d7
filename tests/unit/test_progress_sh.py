"""tools/progress.sh, the step and heartbeat lines of ./dev, tools/k8s/build.sh and tools/k8s/images.sh."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROGRESS = ROOT / "tools" / "progress.sh"


def bash(script: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    prelude = f'set -euo pipefail; source "{PROGRESS}"; PROGRESS_PREFIX="[t]"; LORAPLEX_PROGRESS_INTERVAL=1\n'
    return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, timeout=timeout)


def test_steps_heartbeats_and_the_end() -> None:
    r = bash(
        'progress_step 3 8 "kube-apiserver v1 (cached)"\n'
        'PROGRESS_STATUS="echo 12 MB so far" progress_run "compiling x" sleep 2.5\n'
        "echo after"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "[t] [3/8] kube-apiserver v1 (cached)"
    beats = [ln for ln in lines if "... compiling x:" in ln]
    assert len(beats) == 2 and beats[0].endswith("so far; 12 MB so far"), lines
    assert lines[-1].startswith("[t]       compiling x: done in ") and r.stdout == "after\n"


def test_failure_keeps_the_exit_status_and_a_log_takes_the_output(tmp_path: Path) -> None:
    log = tmp_path / "cmd.log"
    r = bash(f'PROGRESS_LOG="{log}" progress_run "noisy" bash -c "echo out; echo err >&2; exit 7" || echo "rc=$?"')
    assert r.stdout == "rc=7\n"
    assert "noisy: FAILED after 0s (exit 7)" in r.stderr and "out" not in r.stderr.replace("noisy", "")
    assert log.read_text() == "out\nerr\n"


def test_a_command_that_exits_the_script_stops_the_heartbeat() -> None:
    t0 = time.monotonic()
    # stderr is a pipe we read to its end: a heartbeat left behind would hold it open
    r = bash('die() { exit 3; }\nLORAPLEX_PROGRESS_INTERVAL=5 progress_run "dies" die\necho unreachable')
    assert r.returncode == 3 and "unreachable" not in r.stdout
    assert time.monotonic() - t0 < 4, "the heartbeat outlived the script"


def test_durations() -> None:
    r = bash("progress_duration 5; echo; progress_duration 182; echo; progress_duration 3725")
    assert r.stdout.split() == ["5s", "3m02s", "1h02m05s"]
