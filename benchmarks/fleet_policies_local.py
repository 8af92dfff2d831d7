"""Before/after on the real processes: the first router against the cost router, same arrivals, same processes.

    python benchmarks/fleet_policies_local.py [--runs 5] [--requests 40] [--util 0.55] [--adapters 6] [--steps 4]

Starts, on loopback, two tiny-model workers (CPU, one torch thread each), each behind its sidecar, as one pool of
two pods `tiny-1` and `tiny-2` (the simulator's names for a pool's pods, so both hash the same homes), with a
hop key as the pods have. Draws one workload: Poisson arrivals at `--util` of the pool's measured capacity, Zipf
adapters, each request entering through a random pod's sidecar (the Service). Then, per run, sends exactly these
requests under each routing policy (the table's pool `policy`, hot-reloaded: `rendezvous`, the first router, and
`cost`, the simulator's improved router and the default now), alternating which goes first, and measures each
request's latency over its own pure inference time (X-Loraplex-Inference-Ms). Prints per-run and median figures,
the cost/first ratio of each run's p95 (queued: waited > 50 ms for the worker; fetched: read the adapter from disk
before the job; probed: more than one attempt), and what the simulator predicts for the same arrivals (same two
policies, inference time as measured). The machine is shared and small: latencies are noisy, hence several runs
and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "operator"))

import urllib.request  # noqa: E402

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from inference_pod.local.stack import free_port, post_generate, start, wait_ready  # noqa: E402
from loraplex.api.hopauth import write_random_key_file  # noqa: E402
from loraplex.sim.costs import SDXL_A10G  # noqa: E402
from loraplex.sim.fleet import IMPROVED, SHIPPED, FleetConfig, simulate  # noqa: E402
from loraplex.sim.workload import Catalog, Workload, zipf_weights  # noqa: E402

PODS = ["tiny-1", "tiny-2"]
POLICIES = {"rendezvous": "first router (rendezvous)", "cost": "cost router + idle probes (default)"}

MAKE_ADAPTERS = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import build_tiny_pipeline
unet = build_tiny_pipeline().unet
for i, name in enumerate(sys.argv[2:]):
    write_lora(Path(sys.argv[1]) / f"{name}.safetensors", unet, rank=4, seed=100 + i, fmt="peft")
"""


def table_doc(sports: dict[str, int], files: dict[str, Path], policy: str, generation: int) -> dict:
    return {
        "version": 1,
        "generation": generation,
        "pools": {
            "tiny": {
                "baseModel": "tiny",
                "endpoints": [{"name": p, "url": f"http://127.0.0.1:{sports[p]}"} for p in PODS],
                "policy": policy,
            }
        },
        "adapters": {n: {"pool": "tiny", "source": {"type": "path", "path": str(f)}} for n, f in files.items()},
    }


async def send_all(
    sports: dict[str, int], t: np.ndarray, adapters: list[int], entries: list[int], steps: int
) -> list[dict]:
    """Each request at its arrival time through its entry sidecar; one record per request."""
    out: list[dict] = [{} for _ in t]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        t0 = time.monotonic() + 0.2

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + float(t[i]) - time.monotonic()))
            body = {"model": f"lora-{adapters[i]}", "prompt": "x", "seed": i, "steps": steps, "width": 64, "height": 64}
            url = f"http://127.0.0.1:{sports[PODS[entries[i]]]}/v1/generate"
            start_t = time.monotonic()
            async with session.post(url, json=body) as r:
                await r.read()
                h = r.headers
                out[i] = {
                    "status": r.status,
                    "latency": time.monotonic() - start_t,
                    "inference": float(h.get("X-Loraplex-Inference-Ms", "nan")) / 1000,
                    "queue": float(h.get("X-Loraplex-Queue-Ms", "nan")) / 1000,
                    "pod": h.get("X-Loraplex-Pod", "?"),
                    "fetch": float(h.get("X-Loraplex-Fetch-Ms", "nan")) / 1000,
                    "attempts": int(h.get("X-Loraplex-Attempts", "0")),
                }

        await asyncio.gather(*(one(i) for i in range(len(t))))
    return out


def figures(records: list[dict]) -> dict[str, float]:
    ok = [r for r in records if r.get("status") == 200]
    ratio = np.array([r["latency"] / r["inference"] for r in ok])
    return {
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "p50_x": float(np.percentile(ratio, 50)),
        "p95_x": float(np.percentile(ratio, 95)),
        "p99_x": float(np.percentile(ratio, 99)),
        "mean_s": float(np.mean([r["latency"] for r in ok])),
        "queued": sum(r["queue"] > 0.05 for r in ok),
        "fetched": sum(r["fetch"] > 0 for r in ok),
        "probed": sum(r["attempts"] > 1 for r in ok),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--util", type=float, default=0.55, help="offered load / the two pods' capacity")
    ap.add_argument("--adapters", type=int, default=6)
    ap.add_argument("--slots", type=int, default=2, help="GPU slots per worker")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory(prefix="policies-local-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        (work / "adapters").mkdir()
        names = [f"lora-{i}" for i in range(args.adapters)]
        subprocess.run([sys.executable, "-c", MAKE_ADAPTERS, str(work / "adapters"), *names], check=True, cwd=REPO)
        files = {n: work / "adapters" / f"{n}.safetensors" for n in names}
        key = str(write_random_key_file(work / "hop-key"))
        wports = {p: free_port() for p in PODS}
        sports = {p: free_port() for p in PODS}
        table_path = work / "table.json"
        generation = 1
        table_path.write_text(json.dumps(table_doc(sports, files, "rendezvous", generation)))
        procs = []
        try:
            for p in PODS:
                worker_args = ["inference_pod.worker", "--model", "tiny", "--host", "127.0.0.1", "--port"]
                worker_args += [str(wports[p]), "--table", str(table_path), "--disk-cache-dir", str(work / p)]
                worker_args += ["--gpu-slots", str(args.slots), "--max-rank", "16", "--torch-threads", "1"]
                worker_args += ["--hop-key-file", key, "--adapter-path-root", str(work / "adapters")]
                procs.append(start(f"worker-{p}", worker_args, wports[p], work / "logs"))
            for p in PODS:
                sidecar_args = ["inference_pod.router", "--host", "127.0.0.1", "--port", str(sports[p])]
                sidecar_args += ["--worker-url", f"http://127.0.0.1:{wports[p]}", "--pod-name", p]
                sidecar_args += ["--table-file", str(table_path), "--hop-key-file", key, "--request-timeout", "600"]
                procs.append(start(f"sidecar-{p}", sidecar_args, sports[p], work / "logs"))
            for proc in procs:
                wait_ready(proc, 300)

            # Capacity: the pure inference time of one request, measured on each pod (first use fetches).
            inf = []
            for _ in range(3):
                for p in PODS:
                    body = {"model": "tiny", "prompt": "x", "steps": args.steps, "width": 64, "height": 64}
                    status, headers, _ = post_generate(f"http://127.0.0.1:{sports[p]}", body)
                    assert status == 200, status
                    inf.append(float(headers["X-Loraplex-Inference-Ms"]) / 1000)
            service = statistics.median(inf)
            rate = args.util * len(PODS) / service
            n = args.requests
            t = np.cumsum(rng.exponential(1 / rate, size=n))
            adapters = rng.choice(args.adapters, size=n, p=zipf_weights(args.adapters, 1.1)).tolist()
            entries = rng.integers(len(PODS), size=n).tolist()
            print(
                f"{n} requests, Poisson {rate:.2f}/s ({args.util:.0%} of 2 pods at {service:.2f} s pure inference, "
                f"{args.steps} steps 64x64), {args.adapters} Zipf adapters, {args.slots} GPU slots per pod, "
                f"entry through a random pod's sidecar; {args.runs} runs\n",
                flush=True,
            )

            results: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
            for run in range(args.runs):
                order = list(POLICIES) if run % 2 == 0 else list(reversed(POLICIES))
                for policy in order:
                    generation += 1
                    table_path.write_text(json.dumps(table_doc(sports, files, policy, generation)))
                    deadline = time.monotonic() + 10
                    for p in PODS:  # every sidecar has this policy before the first request
                        while True:
                            status, _, raw = get_stats(sports[p])
                            if json.loads(raw)["table"]["generation"] == generation:
                                break
                            assert time.monotonic() < deadline
                            time.sleep(0.1)
                    time.sleep(2.0)  # the previous run's load reports age out
                    records = asyncio.run(send_all(sports, t, adapters, entries, args.steps))
                    f = figures(records)
                    results[policy].append(f)
                    print(
                        f"run {run + 1} {policy:10}  p50 {f['p50_x']:.3f}x  p95 {f['p95_x']:.3f}x  "
                        f"p99 {f['p99_x']:.3f}x  mean {f['mean_s']:.2f} s  queued {f['queued']}  "
                        f"fetched {f['fetched']}  probed {f['probed']}  failed {f['failed']}",
                        flush=True,
                    )
        finally:
            for proc in reversed(procs):
                proc.stop()

    # The simulator on the same arrivals (its own random entry pods), inference as measured.
    cat = Catalog(
        names=names,
        base=np.zeros(len(names), dtype=np.int16),
        bases=("tiny",),
        mb=np.full(len(names), 0.1, dtype=np.float32),
        created=np.zeros(len(names)),
    )
    w = Workload(
        cat,
        t,
        np.array(adapters, dtype=np.int32),
        np.full(n, 25, dtype=np.int16),
        np.full(n, 1024 * 1024, dtype=np.int32),
        duration_s=float(t[-1]) + 120.0,
        description="local replay",
    )
    spec = {
        "model": {"name": "tiny"},
        "minReplicas": 2,
        "maxReplicas": 2,
        "replicas": 2,
        "autoscaling": {"enabled": False},
        "adapterCache": {"gpuSlots": args.slots},
    }
    costs = SDXL_A10G.replace(inference_s=service, pod_start_s=1.0)
    sim = {
        "rendezvous": simulate(w, SHIPPED, FleetConfig(costs=costs, pools={"tiny": spec})).summary(),
        "cost": simulate(w, IMPROVED, FleetConfig(costs=costs, pools={"tiny": spec})).summary(),
    }

    def med(policy: str, k: str) -> float:
        return statistics.median(r[k] for r in results[policy])

    ratios = [c["p95_x"] / s["p95_x"] for c, s in zip(results["cost"], results["rendezvous"], strict=True)]
    print(
        "\n| policy | real p50 x | real p95 x | real p99 x | real mean s | queued | fetched | probed "
        "| failed | sim p50 x | sim p95 x | sim p99 x |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for policy, label in POLICIES.items():
        s = sim[policy]
        print(
            f"| {label} | {med(policy, 'p50_x'):.3f} | {med(policy, 'p95_x'):.3f} | {med(policy, 'p99_x'):.3f} "
            f"| {med(policy, 'mean_s'):.2f} | {med(policy, 'queued'):.0f} | {med(policy, 'fetched'):.0f} "
            f"| {med(policy, 'probed'):.0f} | {med(policy, 'failed'):.0f} "
            f"| {s['p50_x']:.3f} | {s['p95_x']:.3f} | {s['p99_x']:.3f} |"
        )
    print(
        f"\nmedians of {args.runs} runs; cost/first p95 per run: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + f" (median {statistics.median(ratios):.3f}); sim {sim['cost']['p95_x'] / sim['rendezvous']['p95_x']:.3f}"
    )
    return 0


def get_stats(port: int) -> tuple[int, dict, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/stats", timeout=10) as r:
        return r.status, dict(r.headers), r.read()


if __name__ == "__main__":
    sys.exit(main())
