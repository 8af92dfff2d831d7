"""The embedded default: a worker and its sidecar on loopback with the `drawing` model.

`loraplex local` copies the drawing model's trained LoRAs to disk (one in kohya
format), writes a routing table, starts the worker and the sidecar as real
processes, sends requests that switch between adapters through the sidecar
(prompt x adapter, two adapters in one request too), saves the PNGs and a
labelled contact sheet of them, and prints, per request, the adapter, the swap
tier and time and the inference time.
"""

from __future__ import annotations

import json
import os
import shutil
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

MODEL = "drawing"
DEMO_ADAPTERS = (("outline", "peft"), ("square", "kohya"), ("palette", "peft"))  # name, key format
DEMO_PROMPTS = (
    "a red circle on a white background",
    "a blue triangle on a white background",
    "a green circle on a black background",
)
# Contact sheet columns: label -> (request model, extra adapters).
DEMO_COLUMNS: dict[str, tuple[str, list[str]]] = {
    "base": (MODEL, []),
    "outline": ("outline", []),
    "square": ("square", []),
    "palette": ("palette", []),
    "square+palette": (MODEL, ["square", "palette"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_demo_files(workdir: Path, pool: str, sidecar_url: str) -> Path:
    """The drawing model's LoRAs copied under workdir plus a routing table naming them; returns the table path."""
    from inference_pod.drawing.model import lora_path

    adapters = {}
    for name, fmt in DEMO_ADAPTERS:
        path = workdir / "adapters" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lora_path(name, fmt), path)
        adapters[name] = {"pool": pool, "source": {"type": "path", "path": str(path)}, "aliases": [f"{name}-lora"]}
    table = {
        "version": 1,
        "generation": 1,
        "pools": {pool: {"baseModel": MODEL, "endpoints": [{"name": "local-0", "url": sidecar_url}]}},
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
    workdir: Path, steps: int = 8, size: int = 32, keep_running: bool = False, requests: list[str] | None = None
) -> int:
    """The demo; `requests`: model names to send with the first prompt instead of the prompt x adapter grid."""
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
    table = write_demo_files(workdir, MODEL, sidecar_url)
    from loraplex.api.hopauth import write_random_key_file

    # The pool key that authenticates the sidecar to its worker (and hops between sidecars): fresh per run.
    hop_key = str(write_random_key_file(workdir / "hop-key"))
    worker = start(
        "worker",
        [
            "inference_pod.worker",
            "--model",
            MODEL,
            "--port",
            str(worker_port),
            "--table",
            str(table),
            "--disk-cache-dir",
            str(workdir / "cache"),
            "--gpu-slots",
            "2",
            "--max-rank",
            "8",
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
        cells: list[tuple[str, str, str, list[str]]]  # prompt, label, request model, extra adapters
        if requests:
            cells = [(DEMO_PROMPTS[0], name, name, []) for name in requests]
        else:
            cells = [(p, label, m, extra) for p in DEMO_PROMPTS for label, (m, extra) in DEMO_COLUMNS.items()]
        rows = []
        pngs: dict[tuple[str, str], bytes] = {}
        for i, (prompt, label, model, extra) in enumerate(cells):
            body: dict = {"model": model, "prompt": prompt, "seed": 1000, "steps": steps, "width": size}
            body["height"] = size
            if extra:
                body["adapters"] = [{"name": n} for n in extra]
            t0 = time.perf_counter()
            status, headers, png = post_generate(sidecar.url, body)
            total_ms = (time.perf_counter() - t0) * 1e3
            if status != 200:
                print(f"request {i} ({label}) failed: {status} {png[:300]!r}")
                return 1
            out = workdir / "images" / f"{i:02d}-{label.replace('+', '-')}.png"
            out.write_bytes(png)
            pngs[(prompt, label)] = png
            rows.append(
                (
                    i,
                    label,
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
        from inference_pod.drawing.sheet import contact_sheet, save_png

        prompts = list(dict.fromkeys(c[0] for c in cells))
        labels = list(dict.fromkeys(c[1] for c in cells))
        sheet = workdir / "contact-sheet.png"
        sheet.write_bytes(save_png(contact_sheet(prompts, labels, pngs)))
        print(f"contact sheet (prompt x adapter) in {sheet}")
        # The sidecar's counters, as the operator reads them: input for `loraplex plan`.
        with urllib.request.urlopen(sidecar.url + "/v1/stats", timeout=10) as r:
            (workdir / "stats.json").write_bytes(r.read())
        print(
            f"router stats in {workdir / 'stats.json'}  (try: loraplex plan --stats {workdir / 'stats.json'} --p95 1.2)"
        )
        if keep_running:
            print(
                f"\nserving: curl -s {sidecar.url}/v1/generate "
                f'-d \'{{"model":"square","prompt":"{DEMO_PROMPTS[0]}"}}\' -o out.png   (Ctrl-C stops)'
            )
            while all(p.popen.poll() is None for p in procs):
                time.sleep(1)
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
