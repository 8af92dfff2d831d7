"""`python -m loraplex.sim sim|plan ...` (to become `loraplex sim` and `loraplex plan`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .costs import PROFILES, CostProfile
from .fleet import NAMED_POLICIES, FleetConfig, simulate
from .workload import WorkloadSpec, build_workload, read_trace


def _costs(args: argparse.Namespace) -> CostProfile:
    c = PROFILES[args.profile]
    changes: dict[str, Any] = {}
    if args.inference_s is not None:
        changes["inference_s"] = args.inference_s
    if args.pod_start_s is not None:
        changes["pod_start_s"] = args.pod_start_s
    return c.replace(**changes) if changes else c


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=sorted(PROFILES), default="sdxl-a10g", help="cost profile (default sdxl-a10g)")
    p.add_argument("--inference-s", type=float, help="override: seconds of one 25-step 1024x1024 image")
    p.add_argument("--pod-start-s", type=float, help="override: seconds from a pod's creation to ready")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--warmup-hours", type=float, default=0.0, help="simulate this long before measuring (caches and pools settle)"
    )
    p.add_argument(
        "--pool-spec",
        action="append",
        default=[],
        metavar="FILE",
        help="BaseModelPool manifest(s) to simulate the pools with (matched by metadata.name = base)",
    )


def _pool_specs(files: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for f in files:
        for d in yaml.safe_load_all(Path(f).read_text()):
            if isinstance(d, dict) and d.get("kind") == "BaseModelPool":
                out[d["metadata"]["name"]] = d.get("spec") or {}
    return out


def _fmt_summary(s: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}


def cmd_sim(args: argparse.Namespace) -> int:
    from . import plot
    from .report import markdown_table, text_table

    costs = _costs(args)
    warm = args.warmup_hours * 3600.0
    if args.trace:
        w = read_trace(args.trace)
    else:
        spec = WorkloadSpec(
            n_adapters=args.adapters,
            zipf_s=args.zipf,
            rate=args.rate,
            traffic=args.traffic,
            duration_s=args.hours * 3600.0 + warm,
            flash_rate=args.flash_rate,
            flash_start_s=warm + args.flash_hour * 3600.0,
            grow_from=args.grow_from,
        )
        w = build_workload(spec, args.seed)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMED_POLICIES]
    if unknown:
        print(f"unknown policy {unknown[0]!r}; known: {', '.join(NAMED_POLICIES)}", file=sys.stderr)
        return 2
    cfg = FleetConfig(costs=costs, pools=_pool_specs(args.pool_spec), seed=args.seed, measure_from_s=warm)
    results = []
    for n in names:
        r = simulate(w, NAMED_POLICIES[n], cfg)
        results.append(r)
        if not args.json:
            print(f"  {n}: {r.wall_s:.1f} s", file=sys.stderr)
    rows = [r.summary() for r in results]
    if args.json:
        print(json.dumps([_fmt_summary(s) for s in rows], indent=2))
    else:
        print(f"{w.description}; {len(w):,} requests; {costs.name}")
        print(text_table(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        base = "dedicated" if "dedicated" in names else None
        (out / "table.md").write_text(markdown_table(rows, baseline=NAMED_POLICIES[base].name if base else None) + "\n")
        plot.latency_cdf(out / "latency_cdf.png", results)
        plot.day_chart(out / "gpus_over_day.png", results, from_s=warm)
        print(f"wrote {out}/table.md, latency_cdf.png, gpus_over_day.png", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from . import plot
    from .plan import Target, apply_to_file, plan, recommendation_yaml
    from .report import text_table
    from .traffic import load_json_docs, workload_from_prometheus, workload_from_stats

    costs = _costs(args)
    target = Target.parse(args.p95)
    if sum(bool(x) for x in (args.stats, args.trace, args.prometheus)) != 1:
        print("give exactly one traffic source: --stats FILE..., --trace FILE or --prometheus FILE", file=sys.stderr)
        return 2
    if args.stats:
        w, info = workload_from_stats(
            load_json_docs(args.stats),
            costs.inference_s,
            args.adapter_mb,
            duration_s=args.hours * 3600.0,
            peak_to_trough=args.peak_to_trough,
            seed=args.seed,
        )
        source = f"{info.polls} poll(s) of {info.sidecars} sidecar(s)"
    elif args.prometheus:
        w, info = workload_from_prometheus(
            json.loads(Path(args.prometheus).read_text()), costs.inference_s, args.adapter_mb, seed=args.seed
        )
        source = f"Prometheus export, {info.polls} steps"
    else:
        w = read_trace(args.trace, default_mb=args.adapter_mb)
        source = f"trace {args.trace}"
    policy = NAMED_POLICIES[args.policy]
    print(
        f"traffic: {source}: {len(w):,} requests over {w.duration_s / 3600:.1f} h, {len(w.catalog):,} adapters, "
        f"pools {', '.join(w.catalog.bases)}; target p95 <= {target}; policy {policy.name!r}; {costs.name}"
    )
    # The pools as they are configured (the manifest to update, unless --pool-spec names others).
    base_specs = _pool_specs(args.pool_spec or ([args.apply_to] if args.apply_to else []))
    result = plan(
        w,
        target,
        costs,
        policy,
        base_specs,
        seed=args.seed,
        measure_from_s=min(args.warmup_hours * 3600.0, w.duration_s / 2),
        max_replicas=args.max_replicas,
    )
    print("\ncandidates (same arrivals):")
    rows = []
    for c in sorted(result.candidates, key=lambda c: c.summary["gpu_hours"]):
        s = dict(c.summary)
        st = c.settings
        s["policy"] = (
            f"min {st['minReplicas']} util {st['targetUtilization']} down {st['scaleDownStabilizationSeconds']}s"
            + (" ok" if c.met else "")
        )
        rows.append(s)
    print(text_table(rows))
    print("\nrecommended settings:\n")
    print(recommendation_yaml(result))
    print("simulated outcome with these settings:")
    s = result.summary
    first = result.outcome.arrival[result.outcome.measured].min() if len(w) else 0
    print(
        f"  GPU-hours {s['gpu_hours']:.1f} over {(w.duration_s - first if len(w) else 0) / 3600:.1f} h, "
        f"mean {s['mean_gpus']:.1f} / max {s['max_gpus']} GPUs, {s['cold_starts']} pod starts"
    )
    for name, p in result.pool_summaries.items():
        print(
            f"  pool {name}: {p['requests']:,} requests, p50 {p['p50_s']:.2f} s, p95 {p['p95_s']:.2f} s "
            f"({p['p95_x']:.3f}x inference), p99 {p['p99_s']:.2f} s, pods max {p['max_pods']}"
        )
    print("  target " + ("met" if result.met else "MISSED: even the fastest candidate is over it (see the table)"))
    if args.plot:
        plot.save_panels(
            args.plot,
            [
                plot.Panel(
                    [
                        plot.cdf_series(name, result.outcome.latency[m] / result.outcome.inference[m])
                        for name, m in _pool_masks(result, w)
                    ],
                    "latency / pure inference (CDF)",
                    "latency / inference (log)",
                    "fraction",
                    logx=True,
                    xlim=(1.0, 4.0),
                    ylim=(0.0, 1.0),
                    vline=target.value if target.ratio else None,
                ),
                *[
                    plot.Panel(
                        [
                            plot.Series(f"{name}: pods", ps["t"] / 3600.0, ps["pods"], step=True),
                            plot.Series(
                                f"{name}: busy pods (15 min mean)", ps["t"] / 3600.0, plot._smooth(ps["busy"], 15)
                            ),
                            plot.Series(
                                f"{name}: requests per minute (15 min mean)",
                                ps["t"] / 3600.0,
                                plot._smooth(ps["rate"] * 60.0, 15),
                            ),
                        ],
                        f"pool {name} with the recommended settings",
                        "hour of the trace",
                        "",
                    )
                    for name, ps in result.outcome.pool_series.items()
                ],
            ],
        )
        print(f"plot: {args.plot}")
    if args.apply_to:
        for note in apply_to_file(args.apply_to, result.pools, result.adapters):
            print(f"applied to {args.apply_to}: {note}")
    return 0 if result.met else 1


def _pool_masks(result: Any, w: Any) -> list[tuple[str, Any]]:
    r = result.outcome
    out = []
    for k, name in enumerate(w.catalog.bases):
        m = r.measured & ~r.rejected & (w.catalog.base[w.adapter] == k)
        if m.any():
            out.append((name, m))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="loraplex", description="Fleet simulator and capacity planner")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sim", help="compare serving policies on the same arrivals")
    _common(s)
    s.add_argument("--adapters", type=int, default=2500)
    s.add_argument("--rate", type=float, default=0.1, help="mean requests per second")
    s.add_argument("--zipf", type=float, default=1.1)
    s.add_argument("--traffic", choices=("poisson", "diurnal", "mmpp"), default="diurnal")
    s.add_argument("--hours", type=float, default=24.0)
    s.add_argument("--flash-rate", type=float, default=0.0, help="flash crowd on one cold adapter, requests/s")
    s.add_argument("--flash-hour", type=float, default=14.0)
    s.add_argument("--grow-from", type=int, help="catalog growth: adapters at the start")
    s.add_argument("--trace", help="replay a CSV trace (time,adapter,steps,size) instead")
    s.add_argument(
        "--policies",
        default="dedicated,seed,shipped,improved",
        help=f"comma-separated, from: {', '.join(NAMED_POLICIES)}",
    )
    s.add_argument("--out", help="directory for table.md and the PNG plots")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sim)

    p = sub.add_parser("plan", help="pool settings for a traffic and a p95 target")
    _common(p)
    p.add_argument("--stats", nargs="+", help="sidecar /v1/stats documents (JSON, list or JSONL)")
    p.add_argument("--trace", help="CSV trace: time,adapter,steps,size[,base,adapter_mb]")
    p.add_argument("--prometheus", help="Prometheus query_range JSON of a per-adapter request rate")
    p.add_argument("--p95", required=True, help="target: 1.1x (over pure inference), 10%%, or seconds (12s)")
    p.add_argument(
        "--policy",
        choices=sorted(NAMED_POLICIES),
        default="shipped",
        help="router/operator behaviour to plan for (default: as shipped)",
    )
    p.add_argument("--hours", type=float, default=24.0, help="a single stats snapshot: hours to simulate")
    p.add_argument("--peak-to-trough", type=float, default=1.0, help="a single stats snapshot: diurnal shape")
    p.add_argument("--adapter-mb", type=float, default=24.0)
    p.add_argument("--max-replicas", type=int, default=64)
    p.add_argument("--plot", help="PNG: latency CDF and pods over time with the recommended settings")
    p.add_argument("--apply-to", help="BaseModelPool (and LoraAdapter) manifest YAML to write the settings into")
    p.set_defaults(func=cmd_plan)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
