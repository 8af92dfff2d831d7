"""Fleet simulator comparison tables and plots: dedicated deployments vs the seed's shared pool vs loraplex.

    python benchmarks/fleet_sim.py [--quick] [--big] [--sections main,ladder,h100,scenarios,big]
                                   [--img-dir docs/img] [--md out/fleet-sim.md]

Every table runs its policies on the SAME arrivals (one workload per table,
one seed). Sections:
- main:      2,500 adapters, seed-like traffic (92% SDXL, Zipf 1.1, 0.1 req/s
             mean over a diurnal day, 3:1 peak to trough, about 10 distinct
             adapters per 2 minutes), SDXL on A10G; 6 h of warm-up, then 24 h
             measured;
- ladder:    the same arrivals, one policy change at a time (before/after);
- h100:      the main workload on the H100 cost profile (traffic x4: the same
             GPU utilisation);
- scenarios: MMPP bursts, a flash crowd on one cold adapter, a catalog that
             grows from 1,000 to 2,500 adapters during the day;
- peak:      the busiest hour of the 50,000-adapter day on a pool held at 90
             pods: entry points (pod sidecars, gateways) and load views;
- big:       50,000 adapters, 5.5 req/s mean (peaks need ~100 GPUs), A10G.

Prints markdown tables (also written to --md) and saves PNG plots in --img-dir.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "operator"))

from loraplex.sim import plot  # noqa: E402
from loraplex.sim.costs import SDXL_A10G, SDXL_H100  # noqa: E402
from loraplex.sim.fleet import (  # noqa: E402
    COST_GOSSIP,
    DEDICATED,
    IMPROVED,
    SEED_SHARED,
    SHIPPED,
    FleetConfig,
    Policy,
    simulate,
)
from loraplex.sim.report import markdown_table  # noqa: E402
from loraplex.sim.workload import WorkloadSpec, build_workload, distinct_per_window  # noqa: E402

H = 3600.0
WARM = 6 * H
# What `plan` recommends for this traffic with the improved router: targetUtilization 0.9 (see docs/fleet-sim.md).
PLANNED = Policy(
    "loraplex, improved + planned targetUtilization 0.9",
    routing="cost",
    load_view="gossip",
    tier_info="homes",
    idle_probe=3,
    max_attempts=4,
    target_utilization=0.9,
)


def pools(max_sdxl: int = 64, max_other: int = 16, disk_mb: int | None = None) -> dict:
    out = {
        "sdxl": {"model": {"name": "sdxl"}, "minReplicas": 1, "maxReplicas": max_sdxl},
        "sd15": {"model": {"name": "sd15"}, "minReplicas": 1, "maxReplicas": max_other},
    }
    if disk_mb:
        for spec in out.values():
            spec["adapterCache"] = {"diskCacheMB": disk_mb}
    return out


def run_table(
    title: str,
    w,
    policies,
    cfg: FleetConfig,
    out: list[str],
    img: Path | None,
    tag: str,
    baseline: str | None = DEDICATED.name,
):
    t0 = time.perf_counter()
    results = []
    for p in policies:
        r = simulate(w, p, cfg)
        results.append(r)
        print(f"  {p.name}: {r.wall_s:.1f} s", file=sys.stderr, flush=True)
    rows = [r.summary() for r in results]
    m = w.t >= cfg.measure_from_s
    head = (
        f"### {title}\n\n{w.description}; {int(m.sum()):,} requests measured over "
        f"{(w.duration_s - cfg.measure_from_s) / H:.0f} h ({len(w):,} with warm-up), "
        f"{distinct_per_window(w.slice(cfg.measure_from_s, w.duration_s)):.1f} distinct adapters per 2 min; "
        f"{cfg.costs.name}: inference {cfg.costs.inference_s} s, pod start {cfg.costs.pod_start_s} s. "
        f"Simulated in {time.perf_counter() - t0:.1f} s.\n"
    )
    has_base = baseline is not None and any(p.name == baseline for p in policies)
    table = markdown_table(rows, baseline=baseline if has_base else None)
    out.append(head + "\n" + table + "\n")
    print(out[-1], flush=True)
    if img is not None:
        plot.latency_cdf(img / f"fleet-{tag}-latency-cdf.png", results, title=f"{title}: latency / pure inference")
        plot.day_chart(img / f"fleet-{tag}-gpus.png", results, title=f"{title}: GPUs held", from_s=cfg.measure_from_s)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 h measured after 2 h warm-up (smoke run)")
    ap.add_argument(
        "--sections",
        default="main,ladder,h100,scenarios,peak",
        help="comma-separated: main, ladder, h100, scenarios, peak, big",
    )
    ap.add_argument("--big", action="store_true", help="add the 50,000-adapter section")
    ap.add_argument("--img-dir", default=str(REPO / "docs" / "img"))
    ap.add_argument("--md", default=str(REPO / "out" / "fleet-sim.md"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if args.big:
        sections.add("big")
    warm, hours = (2 * H, 6 * H) if args.quick else (WARM, 24 * H)
    img = Path(args.img_dir)
    img.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    t_all = time.perf_counter()
    seed_spec = WorkloadSpec(n_adapters=2500, zipf_s=1.1, rate=0.1, traffic="diurnal", duration_s=warm + hours)
    w = build_workload(seed_spec, args.seed)
    cfg = FleetConfig(costs=SDXL_A10G, pools=pools(), seed=args.seed, measure_from_s=warm)

    if "main" in sections:
        run_table(
            "2,500 adapters, seed-like traffic, SDXL on A10G",
            w,
            [DEDICATED, SEED_SHARED, SHIPPED, IMPROVED, PLANNED],
            cfg,
            out,
            img,
            "seed-a10g",
        )

    if "ladder" in sections:
        ladder = [
            SHIPPED,
            Policy("+ tier-aware choice (bounded load)", routing="tiered"),
            Policy("shipped, exact global in-flight view", load_view="global"),
            COST_GOSSIP,
            IMPROVED,
            Policy(
                "improved + prefetch homes",
                routing="cost",
                load_view="gossip",
                tier_info="homes",
                idle_probe=3,
                max_attempts=4,
                prefetch="homes",
            ),
            Policy(
                "improved + churn budget 5/poll",
                routing="cost",
                load_view="gossip",
                tier_info="homes",
                idle_probe=3,
                max_attempts=4,
                churn_budget=5,
            ),
            Policy(
                "improved + p95 wait budget sizing",
                routing="cost",
                load_view="gossip",
                tier_info="homes",
                idle_probe=3,
                max_attempts=4,
                wait_budget_s=0.85,
            ),
            Policy(
                "improved, targetUtilization 0.8",
                routing="cost",
                load_view="gossip",
                tier_info="homes",
                idle_probe=3,
                max_attempts=4,
                target_utilization=0.8,
            ),
            PLANNED,
            Policy(
                "improved, in-flight not divided by utilisation",
                routing="cost",
                load_view="gossip",
                tier_info="homes",
                idle_probe=3,
                max_attempts=4,
                sizing="inflight",
            ),
            Policy(
                "improved, in-flight + 1 idle pod",
                routing="cost",
                load_view="gossip",
                tier_info="homes",
                idle_probe=3,
                max_attempts=4,
                sizing="inflight",
                headroom=1,
            ),
        ]
        run_table(
            "Policy changes one at a time (same arrivals as above)", w, ladder, cfg, out, None, "ladder", baseline=None
        )

    if "h100" in sections:
        wh = build_workload(
            WorkloadSpec(n_adapters=2500, zipf_s=1.1, rate=0.4, traffic="diurnal", duration_s=warm + hours), args.seed
        )
        run_table(
            "2,500 adapters, 4x the seed's traffic, SDXL on H100",
            wh,
            [DEDICATED, SEED_SHARED, SHIPPED, IMPROVED],
            FleetConfig(costs=SDXL_H100, pools=pools(), seed=args.seed, measure_from_s=warm),
            out,
            img,
            "seed-h100",
        )
        # What closes the gap on an H100, where a fetch from the hub (0.72 s) is a third of the inference.
        kw = {"routing": "cost", "load_view": "gossip", "tier_info": "homes", "idle_probe": 3, "max_attempts": 4}
        in_cluster = SDXL_H100.replace(
            name="sdxl-h100, in-cluster adapter cache", source_latency_s=0.02, source_s_per_mb=0.001
        )
        big_disk = pools(disk_mb=131072)
        variants = [
            ("improved (as above)", IMPROVED, SDXL_H100, pools()),
            ("+ catalog prefetch, 128 GB disk", Policy("p", prefetch="catalog", **kw), SDXL_H100, big_disk),
            ("+ in-cluster adapter cache (20 ms, 1 GB/s)", IMPROVED, in_cluster, pools()),
            ("+ both", Policy("p", prefetch="catalog", **kw), in_cluster, big_disk),
        ]
        rows, t0 = [], time.perf_counter()
        for label, pol, costs, pl in variants:
            r = simulate(wh, pol, FleetConfig(costs=costs, pools=pl, seed=args.seed, measure_from_s=warm))
            print(f"  {label}: {r.wall_s:.1f} s", file=sys.stderr, flush=True)
            rows.append({**r.summary(), "policy": label})
        out.append(
            f"### H100: what closes the gap (same arrivals)\n\nSimulated in {time.perf_counter() - t0:.1f} s.\n\n"
            + markdown_table(rows)
            + "\n"
        )
        print(out[-1], flush=True)

    if "scenarios" in sections:
        pols = [SEED_SHARED, SHIPPED, IMPROVED]
        scen = {
            "mmpp": WorkloadSpec(
                n_adapters=2500,
                zipf_s=1.1,
                rate=0.1,
                traffic="mmpp",
                burst_factor=5.0,
                burst_share=0.1,
                burst_hold_s=300.0,
                duration_s=warm + hours,
            ),
            "flash": WorkloadSpec(
                n_adapters=2500,
                zipf_s=1.1,
                rate=0.1,
                traffic="diurnal",
                flash_rate=0.5,
                flash_start_s=warm + (hours / 2),
                flash_duration_s=900.0,
                duration_s=warm + hours,
            ),
            "growth": WorkloadSpec(
                n_adapters=2500, grow_from=1000, zipf_s=1.1, rate=0.1, traffic="diurnal", duration_s=warm + hours
            ),
        }
        titles = {
            "mmpp": "MMPP bursts (5x rate, 10% of the time, 5 min bursts)",
            "flash": "Flash crowd: 0.5 req/s for 15 min on one cold adapter",
            "growth": "Growing catalog: 1,000 -> 2,500 adapters during the day",
        }
        for tag, spec in scen.items():
            run_table(
                titles[tag],
                build_workload(spec, args.seed),
                pols,
                cfg,
                out,
                img if tag == "flash" else None,
                f"{tag}",
                baseline=None,
            )

    if "peak" in sections:
        # The busiest hour of the 50,000-adapter day, the pool held at 90..100 pods: how requests enter and
        # what each router knows decides the tail. Same arrivals for every row.
        wp = build_workload(
            WorkloadSpec(n_adapters=50_000, zipf_s=1.1, rate=5.5, traffic="diurnal", duration_s=24 * H), args.seed
        ).slice(12 * H, 13 * H)
        peak_pools = {
            "sdxl": {"model": {"name": "sdxl"}, "minReplicas": 60, "maxReplicas": 100, "replicas": 90},
            "sd15": {"model": {"name": "sd15"}, "minReplicas": 1, "maxReplicas": 16, "replicas": 8},
        }
        kw = {"routing": "cost", "tier_info": "homes"}
        run_table(
            "Peak hour at 50,000 adapters: entry points and load views",
            wp,
            [
                SHIPPED,
                Policy("cost routing, each pod sidecar's own view", **kw),
                Policy(
                    "cost routing, pods gossip in-flight every 5 s, 3 idle probes",
                    load_view="gossip",
                    gossip_s=5.0,
                    idle_probe=3,
                    max_attempts=4,
                    **kw,
                ),
                IMPROVED,
                Policy("cost routing, 1 gateway (its own view is global)", gateways=1, **kw),
                Policy("cost routing, 2 gateways, own views", gateways=2, **kw),
                Policy(
                    "cost routing, 2 gateways gossiping every 1 s, 3 idle probes",
                    gateways=2,
                    load_view="gossip",
                    idle_probe=3,
                    max_attempts=4,
                    **kw,
                ),
            ],
            FleetConfig(costs=SDXL_A10G, pools=peak_pools, seed=args.seed, measure_from_s=600.0, record_pools=False),
            out,
            None,
            "peak",
            baseline=None,
        )

    if "big" in sections:
        big_hours = 6 * H if args.quick else hours
        wb = build_workload(
            WorkloadSpec(n_adapters=50_000, zipf_s=1.1, rate=5.5, traffic="diurnal", duration_s=warm + big_hours),
            args.seed,
        )
        run_table(
            "50,000 adapters, 5.5 req/s mean (about 100 GPUs at peak), SDXL on A10G",
            wb,
            [DEDICATED, SEED_SHARED, SHIPPED, IMPROVED, PLANNED],
            FleetConfig(costs=SDXL_A10G, pools=pools(160, 32), seed=args.seed, measure_from_s=warm, record_pools=False),
            out,
            img,
            "big-a10g",
        )

    total = time.perf_counter() - t_all
    out.append(f"_All tables: {total:.0f} s on this machine._\n")
    md = Path(args.md)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(out))
    print(f"wrote {md} and plots in {img} ({total:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
