"""The embedded default: a worker and its sidecar on loopback with the built-in `drawing` model.

`loraplex local` copies the drawing model's trained LoRAs to disk (one in kohya
format), writes a routing table, starts the worker and the sidecar as real
processes, sends requests that switch between adapters through the sidecar
(prompt x adapter, two adapters in one request too), saves the PNGs and a
labelled contact sheet of them, and prints, per request, the adapter, its pool,
the swap tier and time and the inference time. With `flux` a second pool serves
`tiny-flux` beside it (its own worker and sidecar, FLUX demo adapters): every
request enters the first sidecar, which forwards the FLUX ones to the FLUX
pool's pod.
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
FLUX_DEMO_ADAPTERS = (  # name, key format, rank, seed: for the tiny-flux pool
    ("flux-ink", "peft", 8, 44),
    ("flux-film", "kohya", 4, 55),
)
FLUX_REQUESTS = ["flux-ink", "square", "flux-film", "flux-ink", "tiny-flux"]  # after the grid, with --flux


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one handed out before: the OS may give a just-closed port to the next bind, and
    two of the demo's servers would then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass(frozen=True)
class DemoPool:
    name: str  # the pool's name = its base model (`drawing`, `tiny-flux`)
    pod: str  # its one endpoint's name
    sidecar_port: int
    worker_port: int

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"


def _demo_adapters(workdir: Path, pool: str) -> dict[str, dict]:
    """The pool's demo adapter files (made once, kept across runs) as routing-table entries."""
    specs = FLUX_DEMO_ADAPTERS if pool == "tiny-flux" else DEMO_ADAPTERS
    paths = {name: workdir / "adapters" / f"{name}.safetensors" for name, *_ in specs}
    if pool == MODEL:  # the drawing model's trained LoRAs, shipped in the package
        from inference_pod.drawing.model import lora_path

        for name, fmt in DEMO_ADAPTERS:
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lora_path(name, fmt), paths[name])
    elif not all(p.exists() for p in paths.values()):
        import torch

        from inference_pod.local.lora_factory import write_flux_lora
        from inference_pod.worker.tiny_flux import build_tiny_flux_pipeline

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

        transformer = build_tiny_flux_pipeline().transformer
        for name, fmt, rank, seed in FLUX_DEMO_ADAPTERS:
            alpha = float(rank) if fmt == "kohya" else None
            write_flux_lora(paths[name], transformer, rank=rank, seed=seed, fmt=fmt, alpha=alpha, strength=3.0)
    return {
        name: {"pool": pool, "source": {"type": "path", "path": str(path)}, "aliases": [f"{name}-lora"]}
        for name, path in paths.items()
    }


def write_demo_files(workdir: Path, pools: list[DemoPool]) -> tuple[Path, dict[str, Path]]:
    """Demo adapters for each pool plus the routing tables: the sidecars' (every pool) and one per worker (its own
    pool's adapters only). Returns (sidecar table, pool -> worker table)."""
    adapters = {pool.name: _demo_adapters(workdir, pool.name) for pool in pools}

    def table(names: list[str]) -> dict:
        by_name = {p.name: p for p in pools}
        return {
            "version": 1,
            "generation": 1,
            "pools": {
                n: {"baseModel": n, "endpoints": [{"name": by_name[n].pod, "url": by_name[n].sidecar_url}]}
                for n in names
            },
            "adapters": {k: v for n in names for k, v in adapters[n].items()},
        }

    path = workdir / "routing-table.json"
    path.write_text(json.dumps(table([p.name for p in pools]), indent=2))
    worker_tables = {}
    for pool in pools:
        worker_tables[pool.name] = workdir / f"routing-table-{pool.name}.json"
        worker_tables[pool.name].write_text(json.dumps(table([pool.name]), indent=2))
    return path, worker_tables


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


def start_pod(pool: DemoPool, table: Path, worker_table: Path, workdir: Path, steps: int, hop_key: str) -> list[Proc]:
    """The pool's worker and its sidecar (the sidecar recognises its own endpoint by --pod-name)."""
    worker = start(
        f"worker-{pool.name}",
        [
            "inference_pod.worker",
            "--model",
            pool.name,
            "--port",
            str(pool.worker_port),
            "--table",
            str(worker_table),
            "--disk-cache-dir",
            str(workdir / "cache" / pool.name),
            "--gpu-slots",
            "2",
            "--max-rank",
            "16",
            "--default-steps",
            str(steps),
            "--hop-key-file",
            hop_key,
        ],
        pool.worker_port,
        workdir / "logs",
    )
    sidecar = start(
        f"sidecar-{pool.name}",
        [
            "inference_pod.router",
            "--host",
            "127.0.0.1",
            "--port",
            str(pool.sidecar_port),
            "--worker-url",
            worker.url,
            "--pod-name",
            pool.pod,
            "--table-file",
            str(table),
            "--hop-key-file",
            hop_key,
        ],
        pool.sidecar_port,
        workdir / "logs",
    )
    return [worker, sidecar]


def run_local(
    workdir: Path,
    steps: int = 8,
    size: int = 32,
    keep_running: bool = False,
    requests: list[str] | None = None,
    flux: bool = False,
) -> int:
    """The demo; `requests`: model names to send with the first prompt instead of the prompt x adapter grid (and,
    with `flux`, the FLUX requests after it)."""
    # SIGTERM (a supervisor, `kill`) and SIGHUP (the terminal closed) stop the workers and the sidecars too;
    # without this the process died at once and left them running in their own sessions.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "images").mkdir(exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    pools = [DemoPool(MODEL, "local-0", free_port(), free_port())]
    if flux:
        pools.append(DemoPool("tiny-flux", "local-1", free_port(), free_port()))
    print(f"loraplex local stack in {workdir}")
    print(f"generating demo adapters for {' and '.join(p.name for p in pools)} ...", flush=True)
    table, worker_tables = write_demo_files(workdir, pools)
    from loraplex.api.hopauth import write_random_key_file

    # The pool key that authenticates the sidecars to their workers (and hops between sidecars): fresh per run.
    hop_key = str(write_random_key_file(workdir / "hop-key"))
    procs: list[Proc] = []
    try:
        for pool in pools:  # all start at once: the workers load their models side by side
            procs += start_pod(pool, table, worker_tables[pool.name], workdir, steps, hop_key)
        for proc in procs:
            wait_ready(proc, 300 if proc.name.startswith("worker") else 60)
        entry = procs[1]  # the first pool's sidecar: every request enters there
        for proc in procs:
            print(f"{proc.name} {proc.url}" + (" (loopback only)" if proc.name.startswith("worker") else ""))
        print()
        cells: list[tuple[str, str, str, list[str]]]  # prompt, label, request model, extra adapters
        if requests:
            cells = [(DEMO_PROMPTS[0], name, name, []) for name in requests]
        else:
            cells = [(p, label, m, extra) for p in DEMO_PROMPTS for label, (m, extra) in DEMO_COLUMNS.items()]
            cells += [(DEMO_PROMPTS[0], name, name, []) for name in (FLUX_REQUESTS if flux else [])]
        rows = []
        pngs: dict[tuple[str, str], bytes] = {}  # the drawing pool's pictures: the contact sheet
        for i, (prompt, label, model, extra) in enumerate(cells):
            body: dict = {"model": model, "prompt": prompt, "seed": 1000, "steps": steps, "width": size}
            body["height"] = size
            if extra:
                body["adapters"] = [{"name": n} for n in extra]
            t0 = time.perf_counter()
            status, headers, png = post_generate(entry.url, body)
            total_ms = (time.perf_counter() - t0) * 1e3
            if status != 200:
                print(f"request {i} ({label}) failed: {status} {png[:300]!r}")
                return 1
            out = workdir / "images" / f"{i:02d}-{label.replace('+', '-')}.png"
            out.write_bytes(png)
            pod = headers.get(hdr.POD, "?")
            pool_name = next((p.name for p in pools if p.pod == pod), "?")
            if pool_name == MODEL:
                pngs[(prompt, label)] = png
            rows.append(
                (
                    i,
                    label,
                    f"{pool_name} ({'FLUX' if pool_name == 'tiny-flux' else 'SDXL'})",
                    headers.get(hdr.SWAP_TIER, "?"),
                    headers.get(hdr.SWAP_MS, "?"),
                    headers.get(hdr.INFERENCE_MS, "?"),
                    f"{total_ms:.0f}",
                    out.name,
                )
            )
        cols = ("#", "model", "pool", "swap tier", "swap ms", "inference ms", "total ms", "image")
        widths = [max(len(str(c)), *(len(str(r[k])) for r in rows)) for k, c in enumerate(cols)]
        print("  ".join(str(c).ljust(w) for c, w in zip(cols, widths, strict=True)))
        for r in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
        print(f"\nimages in {workdir / 'images'}")
        from inference_pod.drawing.sheet import contact_sheet, save_png

        prompts = list(dict.fromkeys(prompt for prompt, _ in pngs))
        labels = list(dict.fromkeys(label for _, label in pngs))
        sheet = workdir / "contact-sheet.png"
        sheet.write_bytes(save_png(contact_sheet(prompts, labels, pngs)))
        print(f"contact sheet (prompt x adapter) in {sheet}")
        # The sidecar's counters, as the operator reads them: input for `loraplex plan`.
        with urllib.request.urlopen(entry.url + "/v1/stats", timeout=10) as r:
            (workdir / "stats.json").write_bytes(r.read())
        print(
            f"router stats in {workdir / 'stats.json'}  (try: loraplex plan --stats {workdir / 'stats.json'} --p95 1.2)"
        )
        if keep_running:
            print(
                f"\nserving: curl -s {entry.url}/v1/generate "
                f'-d \'{{"model":"square","prompt":"{DEMO_PROMPTS[0]}"}}\' -o out.png   (Ctrl-C stops)'
            )
            while all(p.popen.poll() is None for p in procs):
                time.sleep(1)
        return 0
    finally:
        for p in reversed(procs):
            p.stop()
