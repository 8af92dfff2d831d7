"""Soak: N minutes of mixed traffic through a real sidecar and worker, with adapter churn, bad sources and a crash.

    python benchmarks/soak.py [--minutes 30] [--clients 3] [--adapters 12] [--kill-at 0.4]

Starts, all on 127.0.0.1: a tiny-model worker (CPU) and its pod-mode sidecar sharing a random hop key (like
`loraplex local`), a flaky adapter source (a local HTTP server that fails every k-th download: alternately a 503
and a connection reset mid-body) and a slow one (trickles the file in small pieces). The adapters (made with the
LoRA factory) outnumber the GPU slots and overflow the RAM and disk cache budgets, so swaps go through the
gpu/ram/disk/source tiers. Several clients send 1-step 64x64 generations for randomly chosen adapters (and the
base model) through the sidecar; once, at --kill-at of the run, the worker is SIGKILLed and started again on the
same port with the same disk cache (a container restart).

Prints requests by status, p50/p95 latency per minute and overall, the swap tiers seen, the worker's and the
sidecar's RSS and open file descriptors sampled over time, and the lost requests (no HTTP answer at all: must be
0; a 5xx while the worker is down is an answered error and is counted apart). Writes out/soak/soak.md and a
Pillow-drawn plot out/soak/soak.png. Every loop is bounded by a count and the run's deadline; a client waits
0.25 s after an error (no retry storm while the worker is down).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loraplex.api import headers as hdr  # noqa: E402
from loraplex.api.hopauth import write_random_key_file  # noqa: E402
from tests.helpers.procs import PYTHON, ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready  # noqa: E402
from tests.helpers.trickle_server import RawHttpServer  # noqa: E402

MAKE_ADAPTERS = """
import json, sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import build_tiny_pipeline
out, specs = Path(sys.argv[1]), json.loads(sys.argv[2])
unet = build_tiny_pipeline().unet
for name, rank, seed, fmt in specs:
    write_lora(out / f"{name}.safetensors", unet, rank=rank, seed=seed, fmt=fmt, strength=3.0)
"""


# ---------------------------------------------------------------- adapter sources that misbehave


class SourceServer(RawHttpServer):
    """Raw-socket HTTP file server on loopback: `flaky` fails every k-th GET, `slow` trickles every body."""

    def __init__(self, directory: Path, mode: str, every: int = 3, piece: int = 32 * 1024, delay: float = 0.15):
        super().__init__(backlog=64)
        self.directory, self.mode, self.every, self.piece, self.delay = directory, mode, every, piece, delay
        self.counts: Counter[str] = Counter()
        self._n = 0
        self._lock = threading.Lock()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            name = data.split(b" ", 2)[1].decode().rsplit("/", 1)[-1]
            path = self.directory / name
            if not name or not path.is_file():
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.counts["404"] += 1
                return
            payload = path.read_bytes()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            with self._lock:
                self._n += 1
                n = self._n
            if self.mode == "flaky" and n % self.every == 0:
                if (n // self.every) % 2:
                    self.counts["503"] += 1
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                else:  # headers promise the whole file, half comes, then a reset (RST, not FIN)
                    self.counts["reset"] += 1
                    conn.sendall(head + payload[: len(payload) // 2])
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if self.mode == "slow":
                self.counts["slow"] += 1
                conn.sendall(head)
                for i in range(0, len(payload), self.piece):  # bounded by the payload's length
                    if self._stop.is_set():
                        return
                    conn.sendall(payload[i : i + self.piece])
                    time.sleep(self.delay)
                return
            self.counts["ok"] += 1
            conn.sendall(head + payload)


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    tmp: Path
    table: Path
    hop_key: Path
    worker_port: int
    worker: ProcHandle
    sidecar: ProcHandle
    worker_pids: list[int] = field(default_factory=list)

    def worker_cmd(self) -> list[str]:
        return [
            PYTHON,
            "-m",
            "inference_pod.worker",
            "--model",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.worker_port),
            "--table",
            str(self.table),
            "--hop-key-file",
            str(self.hop_key),
            "--adapter-path-root",
            str(self.tmp / "adapters"),
            "--allow-private-sources",
            "--disk-cache-dir",
            str(self.tmp / "cache"),
            "--gpu-slots",
            "2",
            "--max-rank",
            "16",
            "--ram-cache-mb",
            "2",
            "--disk-cache-mb",
            "3",
            "--default-steps",
            "1",
            "--torch-threads",
            "1",
        ]

    def start_worker(self) -> ProcHandle:
        h = start_process(self.worker_cmd(), self.worker_port, ready_path=None, log_dir=self.tmp)
        self.worker_pids.append(h.pid)
        return h


def make_adapters(tmp: Path, n: int) -> list[tuple[str, str]]:
    """n adapters: (name, kind) with kind path, flaky or slow; the files are in tmp/adapters (path) or tmp/remote."""
    kinds = ["path", "flaky", "path", "flaky", "path", "slow"]
    specs, out = [], []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        name = f"{kind}-{i:02d}"
        specs.append((name, 8 if i % 2 else 16, 100 + i, "kohya" if i % 3 == 0 else "peft"))
        out.append((name, kind))
    (tmp / "adapters").mkdir()
    subprocess.run([PYTHON, "-c", MAKE_ADAPTERS, str(tmp / "adapters"), json.dumps(specs)], check=True, timeout=600)
    (tmp / "remote").mkdir()
    for name, kind in out:
        if kind != "path":  # served only by the URL sources, not readable as a path
            (tmp / "adapters" / f"{name}.safetensors").rename(tmp / "remote" / f"{name}.safetensors")
    return out


def write_table(tmp: Path, adapters: list[tuple[str, str]], sidecar_url: str, flaky: str, slow: str) -> Path:
    entries = {}
    for name, kind in adapters:
        if kind == "path":
            src = {"type": "path", "path": str(tmp / "adapters" / f"{name}.safetensors")}
        else:
            src = {"type": "url", "url": f"{flaky if kind == 'flaky' else slow}/{name}.safetensors"}
        entries[name] = {"pool": "tiny", "source": src}
    table = {
        "version": 1,
        "generation": 1,
        "pools": {"tiny": {"baseModel": "tiny", "endpoints": [{"name": "soak-0", "url": sidecar_url}]}},
        "adapters": entries,
    }
    path = tmp / "table.json"
    path.write_text(json.dumps(table, indent=2))
    return path


# ---------------------------------------------------------------- traffic and sampling


ERROR_BACKOFF_S = 0.25


@dataclass
class Result:
    t0: float  # seconds since the traffic started
    ms: float
    status: int | None  # None: no HTTP answer at all (lost)
    model: str
    tier: str
    error: str = ""


@dataclass
class Sample:
    t: float
    proc: str
    rss_mb: float
    fds: int


@dataclass
class Run:
    start: float
    deadline: float
    max_requests: int
    results: list[Result] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    kill_window: tuple[float, float] | None = None
    restart_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.start


async def client(run: Run, session: aiohttp.ClientSession, url: str, models: list[str], rng: random.Random) -> None:
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(models))]  # skewed: some adapters hot, a long tail
    while time.monotonic() < run.deadline and len(run.results) < run.max_requests:
        model = rng.choices(models, weights)[0]
        body = {"model": model, "prompt": "a lighthouse at dusk", "steps": 1, "width": 64, "height": 64}
        body["seed"] = rng.randrange(1 << 30)
        t0 = run.now()
        try:
            async with session.post(url + "/v1/generate", json=body) as r:
                await r.read()
                res = Result(t0, (run.now() - t0) * 1e3, r.status, model, r.headers.get(hdr.SWAP_TIER, "-"))
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            res = Result(t0, (run.now() - t0) * 1e3, None, model, "-", f"{type(e).__name__}: {e}"[:200])
        run.results.append(res)
        if res.status != 200:  # a client backs off a little after an error instead of spinning
            await asyncio.sleep(ERROR_BACKOFF_S)


async def sampler(run: Run, stack: Stack, interval: float) -> None:
    while time.monotonic() < run.deadline + 1:
        for name, pid in (("worker", stack.worker.pid), ("sidecar", stack.sidecar.pid)):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                run.samples.append(Sample(run.now(), name, p.memory_info().rss / 2**20, p.num_fds()))
        await asyncio.sleep(interval)


async def killer(run: Run, stack: Stack, at: float) -> None:
    await asyncio.sleep(max(0.0, run.start + at - time.monotonic()))
    if time.monotonic() >= run.deadline:
        return
    t_kill = run.now()
    stack.worker.kill()  # SIGKILL to the process group, as the kubelet does when a container dies
    await asyncio.sleep(1.0)
    stack.worker = await asyncio.to_thread(stack.start_worker)
    await asyncio.to_thread(wait_ready, stack.worker, "/readyz", 300.0)
    t_ready = run.now()
    run.restart_s = t_ready - t_kill
    run.kill_window = (t_kill, t_ready + 5.0)  # + a grace for requests answered just after


async def traffic(run: Run, stack: Stack, models: list[str], clients: int, kill_at: float | None, seed: int) -> None:
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:
        tasks = [client(run, session, stack.sidecar.url, models, random.Random(seed + i)) for i in range(clients)]
        tasks.append(sampler(run, stack, 5.0))
        if kill_at is not None:
            tasks.append(killer(run, stack, kill_at))
        await asyncio.gather(*tasks)


# ---------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def in_window(r: Result, w: tuple[float, float] | None) -> bool:
    return w is not None and r.t0 <= w[1] and r.t0 + r.ms / 1e3 >= w[0]


def report(run: Run, minutes: float, servers: dict[str, SourceServer]) -> tuple[str, list[tuple[int, float]]]:
    res = run.results
    lines = []
    by_status = Counter("lost" if r.status is None else str(r.status) for r in res)
    kill_err = sum(1 for r in res if r.status is not None and r.status >= 500 and in_window(r, run.kill_window))
    other_err = sum(1 for r in res if r.status is not None and r.status >= 500 and not in_window(r, run.kill_window))
    lost = by_status.get("lost", 0)
    lines.append(f"| requests | {len(res)} |")
    lines.append("|---|---|")
    lines.append(f"| by status | {', '.join(f'{k}: {v}' for k, v in sorted(by_status.items()))} |")
    lines.append(f"| lost (no HTTP answer) | **{lost}** |")
    lines.append(f"| 5xx while the worker was down (kill window) | {kill_err} |")
    lines.append(f"| 5xx outside the kill window | {other_err} |")
    if run.kill_window:
        w = run.kill_window
        lines.append(
            f"| worker SIGKILL at | {w[0]:.0f} s; ready again after {run.restart_s:.1f} s (window to {w[1]:.0f} s) |"
        )
    tiers = Counter(r.tier for r in res if r.status == 200)
    lines.append(f"| swap tiers (200s) | {', '.join(f'{k}: {v}' for k, v in tiers.most_common())} |")
    for name, srv in servers.items():
        lines.append(f"| {name} source served | {', '.join(f'{k}: {v}' for k, v in sorted(srv.counts.items()))} |")
    errs = Counter(
        f"{r.status} {r.model.split('-')[0]}"
        for r in res
        if r.status not in (None, 200) and not in_window(r, run.kill_window)
    )
    if errs:
        text = ", ".join(f"{k}: {v}" for k, v in errs.most_common())
        lines.append(f"| errors outside the kill window, by status and source kind | {text} |")
    ok = [r.ms for r in res if r.status == 200]
    lines.append(f"| latency of 200s, overall | p50 {percentile(ok, 0.5):.0f} ms, p95 {percentile(ok, 0.95):.0f} ms |")

    table = ["| minute | requests | 200 | errors | lost | p50 ms | p95 ms |", "|---|---|---|---|---|---|---|"]
    p95s = []
    for m in range(max(1, int(minutes + 0.999))):
        b = [r for r in res if m * 60 <= r.t0 < (m + 1) * 60]
        okb = [r.ms for r in b if r.status == 200]
        n_err = sum(1 for r in b if r.status not in (None, 200))
        n_lost = sum(1 for r in b if r.status is None)
        table.append(
            f"| {m + 1} | {len(b)} | {len(okb)} | {n_err} | {n_lost} | {percentile(okb, 0.5):.0f} | "
            f"{percentile(okb, 0.95):.0f} |"
        )
        if okb:
            p95s.append((m + 1, percentile(okb, 0.95)))

    mem = ["| process | RSS first | RSS max | RSS last | fds first | fds max | fds last |", "|---" * 7 + "|"]
    for proc in ("sidecar", "worker"):
        segments = [[s for s in run.samples if s.proc == proc]]
        if proc == "worker" and run.kill_window:  # before the kill and after the restart: two processes
            k = run.kill_window[0]
            segments = [[s for s in segments[0] if s.t < k], [s for s in segments[0] if s.t >= k]]
        for i, seg in enumerate(segments):
            if not seg:
                continue
            label = proc if len(segments) == 1 else f"{proc} ({'before kill' if i == 0 else 'after restart'})"
            mem.append(
                f"| {label} | {seg[0].rss_mb:.0f} MB | {max(s.rss_mb for s in seg):.0f} MB | {seg[-1].rss_mb:.0f} MB "
                f"| {seg[0].fds} | {max(s.fds for s in seg)} | {seg[-1].fds} |"
            )
    md = "\n".join(lines) + "\n\n" + "\n".join(table) + "\n\n" + "\n".join(mem) + "\n"
    if run.notes:
        md += "\n" + "\n".join(f"- {n}" for n in run.notes) + "\n"
    return md, p95s


# ---------------------------------------------------------------- plot (Pillow only)

COLORS = {"p95": (200, 40, 40), "worker": (30, 90, 200), "sidecar": (20, 150, 60)}


def line_chart(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    series: list[tuple[str, list[tuple[float, float]]]],
    title: str,
    xlabel: str,
    ylabel: str,
    x_max: float,
    marks: list[float],
) -> None:
    font = ImageFont.load_default()
    x0, y0, x1, y1 = box
    left, bottom = x0 + 60, y1 - 35
    top, right = y0 + 25, x1 - 15
    draw.text((x0 + 60, y0 + 5), title, fill="black", font=font)
    draw.rectangle((left, top, right, bottom), outline="black")
    ys = [y for _, pts in series for _, y in pts]
    y_max = max(ys) * 1.1 if ys and max(ys) > 0 else 1.0
    x_max = max(x_max, 1e-9)

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / x_max, bottom - (bottom - top) * y / y_max

    for i in range(5):  # ticks
        yv = y_max * i / 4
        _, yy = px(0, yv)
        draw.line((left - 4, yy, left, yy), fill="black")
        draw.text((x0 + 5, yy - 6), f"{yv:.0f}", fill="black", font=font)
        xv = x_max * i / 4
        xx, _ = px(xv, 0)
        draw.line((xx, bottom, xx, bottom + 4), fill="black")
        draw.text((xx - 10, bottom + 6), f"{round(xv, 2):g}", fill="black", font=font)
    for m in marks:
        xx, _ = px(m, 0)
        draw.line((xx, top, xx, bottom), fill=(160, 160, 160))
        draw.text((xx + 3, top + 2), "worker SIGKILL", fill=(120, 120, 120), font=font)
    draw.text(((left + right) // 2 - 30, y1 - 16), xlabel, fill="black", font=font)
    draw.text((x0 + 5, y0 + 5), ylabel, fill="black", font=font)
    for k, (label, pts) in enumerate(series):
        color = COLORS.get(label.split()[0], (0, 0, 0))
        if len(pts) > 1:
            draw.line([px(x, y) for x, y in pts], fill=color, width=2)
        for x, y in pts:
            cx, cy = px(x, y)
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=color)
        draw.text((x0 + 330 + 180 * k, y0 + 5), label, fill=color, font=font)  # legend: in the title row


def plot(run: Run, p95s: list[tuple[int, float]], minutes: float, path: Path) -> None:
    img = Image.new("RGB", (900, 840), "white")
    d = ImageDraw.Draw(img)
    mk = [run.kill_window[0] / 60] if run.kill_window else []
    x_max = minutes
    line_chart(d, (0, 0, 900, 280), [("p95 ms (200s)", [(m - 0.5, v) for m, v in p95s])], "latency p95 per minute",
               "minute of the run (bucket centre)", "ms", x_max, mk)  # fmt: skip
    kill = run.kill_window[0] if run.kill_window else float("inf")
    parts = [  # the worker before the kill and after the restart are two processes: two lines
        ("worker", lambda s: s.proc == "worker" and s.t < kill),
        ("worker (restarted)", lambda s: s.proc == "worker" and s.t >= kill),
        ("sidecar", lambda s: s.proc == "sidecar"),
    ]
    mem = [(f"{n} RSS", [(s.t / 60, s.rss_mb) for s in run.samples if f(s)]) for n, f in parts]
    line_chart(d, (0, 280, 900, 560), mem, "resident memory", "minutes", "MB", x_max, mk)
    fds = [(f"{n} fds", [(s.t / 60, float(s.fds)) for s in run.samples if f(s)]) for n, f in parts]
    line_chart(d, (0, 560, 900, 840), fds, "open file descriptors", "minutes", "fds", x_max, mk)
    img.save(path)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--clients", type=int, default=3, help="concurrent clients")
    p.add_argument("--adapters", type=int, default=12, help="adapters (2 GPU slots, 2 MB RAM and 3 MB disk caches)")
    p.add_argument("--kill-at", type=float, default=0.4, help="fraction of the run at which the worker is SIGKILLed")
    p.add_argument("--no-kill", action="store_true")
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "out" / "soak")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="loraplex-soak-") as d:
        tmp = Path(d)
        print(f"making {a.adapters} adapters ...", file=sys.stderr, flush=True)
        adapters = make_adapters(tmp, a.adapters)
        with (
            SourceServer(tmp / "remote", "flaky", every=3) as flaky,
            SourceServer(tmp / "remote", "slow", piece=32 * 1024, delay=0.15) as slow,
        ):
            worker_port, sidecar_port = free_port(), free_port()
            sidecar_url = f"http://127.0.0.1:{sidecar_port}"
            table = write_table(tmp, adapters, sidecar_url, flaky.url, slow.url)
            hop_key = write_random_key_file(tmp / "hop-key")
            stack = Stack(tmp, table, Path(hop_key), worker_port, None, None)  # type: ignore[arg-type]
            stack.worker = stack.start_worker()
            sidecar_cmd = [
                *loopback_server_cmd("inference_pod.router", str(sidecar_port)),
                "--worker-url",
                f"http://127.0.0.1:{worker_port}",
                "--pod-name",
                "soak-0",
                "--table-file",
                str(table),
                "--hop-key-file",
                str(hop_key),
                "--log-level",
                "WARNING",
            ]
            stack.sidecar = start_process(sidecar_cmd, sidecar_port, ready_path=None, log_dir=tmp)
            try:
                print("waiting for the worker and the sidecar ...", file=sys.stderr, flush=True)
                wait_ready(stack.worker, timeout=600)
                wait_ready(stack.sidecar, timeout=120)
                start = time.monotonic()
                run = Run(start, start + a.minutes * 60, a.max_requests)
                models = ["tiny"] + [name for name, _ in adapters]
                random.Random(a.seed).shuffle(models)
                kill_at = None if a.no_kill else a.kill_at * a.minutes * 60
                print(f"soak: {a.minutes:g} min, {a.clients} clients, {len(models)} models", file=sys.stderr)
                asyncio.run(traffic(run, stack, models, a.clients, kill_at, a.seed))
                for name, h in (("worker", stack.worker), ("sidecar", stack.sidecar)):
                    if not h.alive():
                        run.notes.append(f"{name} was not running at the end (exit {h.proc.returncode})")
                logs = {"worker": stack.worker.log_tail(2000), "sidecar": stack.sidecar.log_tail(2000)}
            finally:
                stack.sidecar.terminate()
                stack.worker.terminate()
            md, p95s = report(run, a.minutes, {"flaky": flaky, "slow": slow})
        for name, text in logs.items():
            (a.out / f"{name}.log").write_text(text)
    header = (
        f"Soak: {a.minutes:g} min, {a.clients} clients, {a.adapters} adapters + the base model "
        f"(2 GPU slots, 2 MB RAM, 3 MB disk cache), 1-step 64x64 tiny-model generations through the sidecar.\n\n"
    )
    (a.out / "soak.md").write_text(header + md)
    plot(run, p95s, a.minutes, a.out / "soak.png")
    print(header + md)
    print(f"wrote {a.out / 'soak.md'} and {a.out / 'soak.png'}", file=sys.stderr)
    lost = sum(1 for r in run.results if r.status is None)
    if lost:
        for r in [r for r in run.results if r.status is None][:10]:
            print(f"lost at {r.t0:.1f} s after {r.ms:.0f} ms: {r.model}: {r.error}", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
