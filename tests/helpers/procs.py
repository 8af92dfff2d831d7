"""Start real processes on loopback for tests and benchmarks, wait until they serve, stop them.

    h = start_process([sys.executable, "-m", "inference_pod.router", "--port", str(port), ...], port)
    urllib.request.urlopen(h.url + "/v1/models")
    h.terminate()

Each process runs in its own session (process group) so kill() also ends the
children it spawned; its stdout and stderr go to a temporary log file whose
tail is quoted in the error when it fails to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


class ProcessStartError(RuntimeError):
    """A process exited or did not become ready in time; the message has its log tail."""


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it), never one this process handed out before.

    The OS can give the same port to two consecutive binds once the first socket is closed: two servers started on
    ports asked for together then collide, and a readiness probe of the one that failed to bind is answered by the
    other (the routing tests' "served by the other pod" failures under load were exactly that)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


def loopback_server_cmd(module: str, port: int | str) -> list[str]:
    """`python -m MODULE --host 127.0.0.1 --port PORT`: the start of every worker/sidecar command line here."""
    return [PYTHON, "-m", module, "--host", "127.0.0.1", "--port", str(port)]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET a URL; (status, body) for any HTTP answer, raises OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class ProcHandle:
    """A started process: its URL, log, and ways to stop it."""

    proc: subprocess.Popen
    port: int
    host: str
    log_path: Path
    cmd: list[str]
    _log_file: object = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process group and reap it."""
        if self.alive():
            self._signal(signal.SIGKILL)
        self._wait(10)

    def terminate(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
        self._wait(10)

    def _wait(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> ProcHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def wait_ready(handle: ProcHandle, ready_path: str = "/readyz", timeout: float = 120.0, interval: float = 0.1) -> None:
    """Poll `ready_path` until it answers 200; raise ProcessStartError with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not handle.alive():
            raise ProcessStartError(
                f"{handle.cmd[:4]}... exited with {handle.proc.returncode} before ready\n"
                f"--- log tail ({handle.log_path}) ---\n{handle.log_tail()}"
            )
        try:
            status, body = http_get(handle.url + ready_path, timeout=2.0)
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)
    handle.kill()
    raise ProcessStartError(
        f"{handle.cmd[:4]}... not ready on {handle.url}{ready_path} after {timeout:.0f}s "
        f"(last: {last})\n--- log tail ({handle.log_path}) ---\n{handle.log_tail()}"
    )


def start_process(
    cmd: list[str],
    port: int,
    ready_path: str | None = "/readyz",
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    host: str = "127.0.0.1",
    log_dir: str | os.PathLike[str] | None = None,
) -> ProcHandle:
    """Start `cmd` (which should listen on host:port) and wait until `ready_path` answers 200.

    `env` is added to the current environment; the repository root is put on
    PYTHONPATH so `python -m inference_pod...` works from anywhere. With
    ready_path=None it returns as soon as the process has started.
    """
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH")) if p)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    name = Path(cmd[0]).name
    if len(cmd) >= 3 and cmd[1] == "-m":  # python -m package.module: name the log after the module
        name = f"{name}-{cmd[2].rsplit('.', 1)[-1]}"
    fd, log_path = tempfile.mkstemp(prefix=f"loraplex-{name}-{port}-", suffix=".log", dir=log_dir)
    log_file = os.fdopen(fd, "wb")
    proc = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=cwd or REPO_ROOT,
        start_new_session=True,
    )
    handle = ProcHandle(proc=proc, port=port, host=host, log_path=Path(log_path), cmd=list(cmd), _log_file=log_file)
    if ready_path is not None:
        wait_ready(handle, ready_path, timeout)
    return handle
