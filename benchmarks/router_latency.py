"""Router overhead on loopback: latency (p50, p99) and throughput through the sidecar vs direct.

    python benchmarks/router_latency.py [--runs 3] [--requests 200] [--no-worker]

Starts, all on 127.0.0.1: an echo peer (a trivial HTTP app: the cheapest
possible "worker"), a tiny-model diffusion worker, a pod-mode sidecar in
front of each, and a gateway sidecar (no worker) whose requests take two
router hops. For each case it sends the same requests direct to the backend
and through the router(s): sequentially for latency, then from several
concurrent clients for throughput. Each figure is the median over --runs
runs. Cases:

- cheap/echo:     POST /v1/generate answered by the echo peer at once;
- cheap/worker:   a request the real worker rejects in validation (steps=0: 400);
- generate/tiny:  a real 64x64, 1-step generation on the tiny model (CPU).

Loops are bounded by the request counts; nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loraplex.api import headers as hdr  # noqa: E402
from loraplex.api.hopauth import write_random_key_file  # noqa: E402
from tests.helpers.procs import PYTHON, ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready  # noqa: E402

ECHO_BODY = {"model": "echo", "prompt": "x"}
REJECT_BODY = {"model": "tiny", "prompt": "x", "steps": 0}
GEN_BODY = {"model": "tiny", "prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64, "seed": 1}


@dataclass
class Stats:
    p50_ms: float
    p99_ms: float
    rps: float
    router_ms: float | None  # the sidecar's own X-Loraplex-Router-Ms, median
    status: int  # every answer of the case had it (checked): a path that fails is not measured as fast


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def one(session: aiohttp.ClientSession, url: str, body: bytes, seen: set[int]) -> tuple[float, float | None]:
    t = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        await r.read()
        router = r.headers.get(hdr.ROUTER_MS)
        seen.add(r.status)
    return time.perf_counter() - t, float(router) if router else None


async def measure(url: str, body: dict, n_seq: int, n_conc: int, concurrency: int) -> Stats:
    data = json.dumps(body).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    seen: set[int] = set()
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(min(5, n_seq)):  # warm the connections and caches
            await one(session, url, data, seen)
        lat, router = [], []
        for _ in range(n_seq):
            dt, rms = await one(session, url, data, seen)
            lat.append(dt)
            if rms is not None:
                router.append(rms)
        queue = list(range(n_conc))

        async def client() -> None:
            while queue:
                queue.pop()
                await one(session, url, data, seen)

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        rps = n_conc / (time.perf_counter() - t)
    if len(seen) != 1:
        raise RuntimeError(f"{url}: mixed answers {sorted(seen)}")
    return Stats(
        percentile(lat, 0.5) * 1e3,
        percentile(lat, 0.99) * 1e3,
        rps,
        statistics.median(router) if router else None,
        seen.pop(),
    )


def write_table(path: Path, endpoints: dict[str, str]) -> None:
    pools = {
        pool: {"baseModel": pool, "endpoints": [{"name": f"{pool}-0", "url": url}]} for pool, url in endpoints.items()
    }
    path.write_text(json.dumps({"version": 1, "generation": 1, "pools": pools, "adapters": {}}))


def start_stack(tmp: Path, with_worker: bool) -> dict[str, ProcHandle]:
    procs: dict[str, ProcHandle] = {}
    # Hops and the sidecar's requests to its worker are signed (loraplex/api/hopauth.py).
    hop_key = ["--hop-key-file", str(write_random_key_file(tmp / "hop-key"))]
    if with_worker:
        port = free_port()
        procs["worker"] = start_process(
            [
                PYTHON,
                "-m",
                "inference_pod.worker",
                "--model",
                "tiny",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disk-cache-dir",
                str(tmp / "cache"),
                *hop_key,
            ],
            port,
            ready_path=None,
            log_dir=tmp,
        )
    port = free_port()
    procs["echo"] = start_process(
        [PYTHON, str(REPO / "tests" / "helpers" / "echo_server.py"), "--port", str(port), "--name", "echo-0"],
        port,
        log_dir=tmp,
    )
    backends = {"echo": procs["echo"]} | ({"tiny": procs["worker"]} if with_worker else {})
    sc_ports = {pool: free_port() for pool in backends}
    table = tmp / "table.json"
    write_table(table, {pool: f"http://127.0.0.1:{p}" for pool, p in sc_ports.items()})
    for pool, backend in backends.items():
        cmd = [
            *loopback_server_cmd("inference_pod.router", str(sc_ports[pool])),
            "--worker-url",
            backend.url,
            "--pod-name",
            f"{pool}-0",
            "--table-file",
            str(table),
            "--log-level",
            "WARNING",
            *hop_key,
        ]
        procs[f"sidecar-{pool}"] = start_process(cmd, sc_ports[pool], ready_path="/healthz", log_dir=tmp)
    port = free_port()
    procs["gateway"] = start_process(
        [
            *loopback_server_cmd("inference_pod.router", str(port)),
            "--table-file",
            str(table),
            "--log-level",
            "WARNING",
            *hop_key,
        ],
        port,
        log_dir=tmp,
    )
    if with_worker:
        wait_ready(procs["worker"], timeout=300)
        wait_ready(procs["sidecar-tiny"], timeout=60)
    wait_ready(procs["sidecar-echo"], timeout=60)
    return procs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=200, help="sequential requests per cheap case and run")
    p.add_argument("--throughput-requests", type=int, default=400, help="concurrent requests per cheap case")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--gen-requests", type=int, default=8, help="sequential generations per run")
    p.add_argument("--no-worker", action="store_true", help="echo peer only (no torch)")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="loraplex-bench-") as d:
        procs = start_stack(Path(d), not a.no_worker)
        try:
            echo, worker = procs["echo"].url, procs.get("worker")
            cases = [
                ("cheap/echo", "direct", echo, ECHO_BODY, a.requests, a.throughput_requests, a.concurrency),
                (
                    "cheap/echo",
                    "sidecar",
                    procs["sidecar-echo"].url,
                    ECHO_BODY,
                    a.requests,
                    a.throughput_requests,
                    a.concurrency,
                ),
                (
                    "cheap/echo",
                    "gateway+sidecar",
                    procs["gateway"].url,
                    ECHO_BODY,
                    a.requests,
                    a.throughput_requests,
                    a.concurrency,
                ),
            ]
            if worker:
                sc = procs["sidecar-tiny"].url
                cases += [
                    (
                        "cheap/worker",
                        "direct",
                        worker.url,
                        REJECT_BODY,
                        a.requests,
                        a.throughput_requests,
                        a.concurrency,
                    ),
                    ("cheap/worker", "sidecar", sc, REJECT_BODY, a.requests, a.throughput_requests, a.concurrency),
                    ("generate/tiny", "direct", worker.url, GEN_BODY, a.gen_requests, a.gen_requests, 2),
                    ("generate/tiny", "sidecar", sc, GEN_BODY, a.gen_requests, a.gen_requests, 2),
                ]
            results: dict[tuple[str, str], list[Stats]] = {}
            for run in range(a.runs):
                for case, path, url, body, n_seq, n_conc, conc in cases:
                    stats = asyncio.run(measure(url + "/v1/generate", body, n_seq, n_conc, conc))
                    direct = results.get((case, "direct"))
                    if direct and direct[-1].status != stats.status:
                        raise RuntimeError(f"{case}: {path} answered {stats.status}, direct {direct[-1].status}")
                    results.setdefault((case, path), []).append(stats)
                print(f"run {run + 1}/{a.runs} done", file=sys.stderr)
        finally:
            for h in procs.values():
                h.terminate()

    print(
        f"\nRouter overhead on loopback, median of {a.runs} runs "
        f"(throughput: {a.concurrency} concurrent clients; generation: 2)\n"
    )
    hdr = (
        f"{'case':<15}{'path':<17}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'+p50 ms':>9}{'p50 x':>7}"
        f"{'req/s x':>9}{'router ms':>11}"
    )
    print(hdr)
    print("-" * len(hdr))
    direct: dict[str, Stats] = {}
    for (case, path), runs in results.items():
        med = Stats(
            statistics.median(s.p50_ms for s in runs),
            statistics.median(s.p99_ms for s in runs),
            statistics.median(s.rps for s in runs),
            statistics.median(s.router_ms for s in runs) if runs[0].router_ms is not None else None,
            runs[0].status,
        )
        base = direct.setdefault(case, med)
        router = f"{med.router_ms:.2f}" if med.router_ms is not None else "-"
        print(
            f"{case:<15}{path:<17}{med.p50_ms:>9.2f}{med.p99_ms:>9.2f}{med.rps:>9.1f}"
            f"{med.p50_ms - base.p50_ms:>+9.2f}{med.p50_ms / base.p50_ms:>7.2f}{med.rps / base.rps:>9.2f}"
            f"{router:>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
