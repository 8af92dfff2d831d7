"""The simulator against the real thing on a small case: the same requests through real worker + sidecar processes.

    python benchmarks/fleet_sim_vs_local.py [--requests 30] [--adapters 5] [--slots 2]

Starts, on loopback, two tiny-model workers, each behind its sidecar (the
local stack's processes), as one pool of two pods named `tiny-1` and
`tiny-2` (the names the simulator gives a pool's pods, so rendezvous hashing
picks the same homes), with `--slots` GPU slots each. Sends a Zipf-drawn
sequence of adapter requests one after another to the first sidecar, and
records which pod served each (X-Loraplex-Pod) and where the adapter was
(X-Loraplex-Swap-Tier). Then simulates the same requests at the times they
were sent (pool of two pods, same slots, the same routing policy: `--policy rendezvous`, the first router, by
default; `cost` for the cost router) and compares,
request by request, the serving pod and the tier. A local path source is
its own disk tier in the worker, so the simulator's "source" (first use) is
counted as "disk".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "operator"))

import numpy as np  # noqa: E402

from inference_pod.local.stack import free_port, post_generate, start, wait_ready  # noqa: E402
from loraplex.api.hopauth import write_random_key_file  # noqa: E402
from loraplex.sim.costs import SDXL_A10G  # noqa: E402
from loraplex.sim.fleet import IMPROVED, SHIPPED, TIER_NAMES, FleetConfig, simulate  # noqa: E402
from loraplex.sim.workload import Catalog, Workload, zipf_weights  # noqa: E402


def write_adapters(workdir: Path, n: int) -> dict[str, Path]:
    from inference_pod.local.lora_factory import write_lora
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    unet = build_tiny_pipeline().unet
    return {
        f"lora-{i}": write_lora(
            workdir / "adapters" / f"lora-{i}.safetensors", unet, rank=4, seed=100 + i, fmt="peft", strength=2.0
        )
        for i in range(n)
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--adapters", type=int, default=5)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument(
        "--policy", choices=("rendezvous", "cost"), default="rendezvous", help="the pool's routing policy (both sides)"
    )
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    sequence = rng.choice(args.adapters, size=args.requests, p=zipf_weights(args.adapters, 1.1)).tolist()

    with tempfile.TemporaryDirectory(prefix="fleet-vs-local-") as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        files = write_adapters(work, args.adapters)
        pods = ["tiny-1", "tiny-2"]
        wports = {p: free_port() for p in pods}
        sports = {p: free_port() for p in pods}
        table = {
            "version": 1,
            "generation": 1,
            "pools": {
                "tiny": {
                    "baseModel": "tiny",
                    "endpoints": [{"name": p, "url": f"http://127.0.0.1:{sports[p]}"} for p in pods],
                    "policy": args.policy,
                }
            },
            "adapters": {n: {"pool": "tiny", "source": {"type": "path", "path": str(f)}} for n, f in files.items()},
        }
        table_path = work / "table.json"
        table_path.write_text(json.dumps(table))
        key = str(write_random_key_file(work / "hop-key"))  # the pod key: sidecar -> worker and sidecar -> sidecar
        procs = []
        try:
            for p in pods:
                procs.append(
                    start(
                        f"worker-{p}",
                        [
                            "inference_pod.worker",
                            "--model",
                            "tiny",
                            "--port",
                            str(wports[p]),
                            "--table",
                            str(table_path),
                            "--disk-cache-dir",
                            str(work / f"cache-{p}"),
                            "--gpu-slots",
                            str(args.slots),
                            "--max-rank",
                            "16",
                            "--default-steps",
                            "2",
                            "--torch-threads",
                            "1",
                            "--hop-key-file",
                            key,
                        ],
                        wports[p],
                        work / "logs",
                    )
                )
                procs.append(
                    start(
                        f"sidecar-{p}",
                        [
                            "inference_pod.router",
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(sports[p]),
                            "--worker-url",
                            f"http://127.0.0.1:{wports[p]}",
                            "--pod-name",
                            p,
                            "--table-file",
                            str(table_path),
                            "--hop-key-file",
                            key,
                        ],
                        sports[p],
                        work / "logs",
                    )
                )
            for proc in procs:
                wait_ready(proc, 300)
            entry = f"http://127.0.0.1:{sports[pods[0]]}"
            sent, real_pod, real_tier, inf_ms = [], [], [], []
            t0 = time.monotonic()
            for i, a in enumerate(sequence):
                sent.append(time.monotonic() - t0)
                status, headers, body = post_generate(
                    entry, {"model": f"lora-{a}", "prompt": "x", "seed": i, "steps": 2, "width": 64, "height": 64}
                )
                if status != 200:
                    print(f"request {i} failed: {status} {body[:200]!r}", file=sys.stderr)
                    return 1
                real_pod.append(headers.get("X-Loraplex-Pod", "?"))
                real_tier.append(headers.get("X-Loraplex-Swap-Tier", "?"))
                inf_ms.append(float(headers.get("X-Loraplex-Inference-Ms", "nan")))
        finally:
            for proc in reversed(procs):
                proc.stop()

    # The same requests, at the times they were sent, through the simulator.
    n = len(sequence)
    names = [f"lora-{i}" for i in range(args.adapters)]
    cat = Catalog(
        names=names,
        base=np.zeros(len(names), dtype=np.int16),
        bases=("tiny",),
        mb=np.full(len(names), 0.1, dtype=np.float32),
        created=np.zeros(len(names)),
    )
    w = Workload(
        cat,
        np.array(sent),
        np.array(sequence, dtype=np.int32),
        np.full(n, 25, dtype=np.int16),
        np.full(n, 1024 * 1024, dtype=np.int32),
        duration_s=sent[-1] + 60.0,
        description="local replay",
    )
    # Inference shorter than any gap between sends: no queueing, as in the sequential real run.
    gap = float(np.min(np.diff(sent))) if n > 1 else 1.0
    costs = SDXL_A10G.replace(inference_s=max(1e-3, 0.5 * gap), pod_start_s=1.0)
    spec = {
        "model": {"name": "tiny"},
        "minReplicas": 2,
        "maxReplicas": 2,
        "replicas": 2,
        "autoscaling": {"enabled": False},
        "adapterCache": {"gpuSlots": args.slots},
    }
    r = simulate(
        w, SHIPPED if args.policy == "rendezvous" else IMPROVED, FleetConfig(costs=costs, pools={"tiny": spec})
    )
    sim_pod = [f"tiny-{int(u) + 1}" for u in r.pod]
    sim_tier = ["disk" if TIER_NAMES[t] == "source" else TIER_NAMES[t] for t in r.tier]

    print(
        f"{n} requests over {args.adapters} adapters, 2 pods x {args.slots} GPU slots; "
        f"real inference median {np.nanmedian(inf_ms):.0f} ms (tiny model, CPU)\n"
    )
    print(f"{'#':>3}  {'adapter':8}  {'real pod':8}  {'sim pod':8}  {'real tier':9}  {'sim tier':8}")
    for i in range(n):
        mark = "" if (real_pod[i], real_tier[i]) == (sim_pod[i], sim_tier[i]) else "  <-"
        print(
            f"{i:>3}  lora-{sequence[i]:<3}  {real_pod[i]:8}  {sim_pod[i]:8}  {real_tier[i]:9}  {sim_tier[i]:8}{mark}"
        )
    rc, sc = Counter(real_tier), Counter(sim_tier)
    print("\nswaps by tier      real  sim")
    for t in ("gpu", "ram", "disk"):
        print(f"  {t:14}  {rc.get(t, 0):5}  {sc.get(t, 0):4}")
    same_pod = sum(a == b for a, b in zip(real_pod, sim_pod, strict=True))
    same_tier = sum(a == b for a, b in zip(real_tier, sim_tier, strict=True))
    print(f"\nsame pod {same_pod}/{n}, same tier {same_tier}/{n}")
    return 0 if same_pod == n and same_tier == n else 1


if __name__ == "__main__":
    sys.exit(main())
