"""The embedded default: a worker and its sidecar on loopback with the `tiny` model.

`loraplex local` generates a few demo adapters on disk (one in kohya format),
writes a routing table, starts the worker and the sidecar as real processes,
sends requests that switch between adapters through the sidecar, saves the
PNGs and prints, per request, the adapter, the swap tier and time and the
inference time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loraplex.api import headers as hdr

DEMO_ADAPTERS = (  # name, key format, rank, seed
    ("pixel-art", "peft", 4, 11),
    ("watercolor", "kohya", 8, 22),
    ("neon", "peft", 16, 33),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_demo_files(workdir: Path, pool: str, sidecar_url: str) -> Path:
    """Demo adapters for the tiny model plus a routing table naming them; returns the table path."""
    import torch

    from inference_pod.local.lora_factory import write_lora
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    unet = build_tiny_pipeline().unet
    adapters = {}
    for name, fmt, rank, seed in DEMO_ADAPTERS:
        path = workdir / "adapters" / f"{name}.safetensors"
        if not path.exists():
            write_lora(path, unet, rank=rank, seed=seed, fmt=fmt, strength=3.0)
        adapters[name] = {"pool": pool, "source": {"type": "path", "path": str(path)}, "aliases": [f"{name}-lora"]}
    table = {
        "version": 1,
        "generation": 1,
        "pools": {pool: {"baseModel": "tiny", "endpoints": [{"name": "local-0", "url": sidecar_url}]}},
        "adapters": adapters,
    }
    path = workdir / "routing-table.json"
    path.write_text(json.dumps(table, indent=2))
    return path


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)


def start(name: str, args: list[str], port: int, log_dir: Path, env: dict | None = None) -> Proc:
    log = log_dir / f"{name}.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=open(log, "wb"),  # noqa: SIM115 (the child keeps it; closed when the process ends)
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    return Proc(name, popen, f"http://127.0.0.1:{port}", log)


def wait_ready(proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}); log:\n{proc.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(proc.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{proc.name} not ready after {timeout}s; log:\n{proc.log.read_text()[-3000:]}")


def post_generate(url: str, body: dict, timeout: float = 300) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(
        url + "/v1/generate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_local's finally: the children are stopped


def run_local(
    workdir: Path, steps: int = 4, size: int = 64, keep_running: bool = False, requests: list[str] | None = None
) -> int:
    # SIGTERM (a supervisor, `kill`) and SIGHUP (the terminal closed) stop the worker and the sidecar too;
    # without this the process died at once and left both running in their own sessions.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "images").mkdir(exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    worker_port, sidecar_port = free_port(), free_port()
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    print(f"loraplex local stack in {workdir}")
    print("generating demo adapters for the tiny model ...", flush=True)
    table = write_demo_files(workdir, "tiny", sidecar_url)
    from loraplex.api.hopauth import write_random_key_file

    # The pool key that authenticates the sidecar to its worker (and hops between sidecars): fresh per run.
    hop_key = str(write_random_key_file(workdir / "hop-key"))
    worker = start(
        "worker",
        [
            "inference_pod.worker",
            "--model",
            "tiny",
            "--port",
            str(worker_port),
            "--table",
            str(table),
            "--disk-cache-dir",
            str(workdir / "cache"),
            "--gpu-slots",
            "2",
            "--max-rank",
            "16",
            "--default-steps",
            str(steps),
            "--hop-key-file",
            hop_key,
        ],
        worker_port,
        workdir / "logs",
    )
    sidecar = start(
        "sidecar",
        [
            "inference_pod.router",
            "--host",
            "127.0.0.1",
            "--port",
            str(sidecar_port),
            "--worker-url",
            worker.url,
            "--pod-name",
            "local-0",
            "--table-file",
            str(table),
            "--hop-key-file",
            hop_key,
        ],
        sidecar_port,
        workdir / "logs",
    )
    procs = [worker, sidecar]
    try:
        wait_ready(worker, 300)
        wait_ready(sidecar, 60)
        print(f"worker {worker.url} (loopback only), sidecar {sidecar.url}\n")
        names = requests or ["pixel-art", "watercolor", "pixel-art", "neon", "watercolor-lora", "tiny", "pixel-art"]
        rows = []
        for i, model in enumerate(names):
            t0 = time.perf_counter()
            status, headers, body = post_generate(
                sidecar.url,
                {
                    "model": model,
                    "prompt": "a lighthouse at dusk",
                    "seed": 7,
                    "steps": steps,
                    "width": size,
                    "height": size,
                },
            )
            total_ms = (time.perf_counter() - t0) * 1e3
            if status != 200:
                print(f"request {i} ({model}) failed: {status} {body[:300]!r}")
                return 1
            out = workdir / "images" / f"{i:02d}-{model}.png"
            out.write_bytes(body)
            rows.append(
                (
                    i,
                    model,
                    headers.get(hdr.SWAP_TIER, "?"),
                    headers.get(hdr.SWAP_MS, "?"),
                    headers.get(hdr.INFERENCE_MS, "?"),
                    f"{total_ms:.0f}",
                    out.name,
                )
            )
        cols = ("#", "model", "swap tier", "swap ms", "inference ms", "total ms", "image")
        widths = [max(len(str(c)), *(len(str(r[k])) for r in rows)) for k, c in enumerate(cols)]
        print("  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True)))
        for r in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
        print(f"\nimages in {workdir / 'images'}")
        # The sidecar's counters, as the operator reads them: input for `loraplex plan`.
        with urllib.request.urlopen(sidecar.url + "/v1/stats", timeout=10) as r:
            (workdir / "stats.json").write_bytes(r.read())
        print(
            f"router stats in {workdir / 'stats.json'}  (try: loraplex plan --stats {workdir / 'stats.json'} --p95 1.2)"
        )
        if keep_running:
            print(
                f'\nserving: curl -s {sidecar.url}/v1/generate -d \'{{"model":"pixel-art","prompt":"hi"}}\' '
                "-o out.png   (Ctrl-C stops)"
            )
            while all(p.popen.poll() is None for p in procs):
                time.sleep(1)
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
