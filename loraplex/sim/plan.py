"""`loraplex plan`: from a platform's traffic and a p95 target to BaseModelPool settings, by simulation.

The search, per run of the simulator on the same arrivals:
1. for minReplicas in (1, 2) and targetUtilization from high to low, the
   first setting whose p95 meets the target in every pool (bisection over
   the ordered list), with scaleDownStabilizationSeconds 300 and 900: the
   feasible candidate with the fewest GPU-hours wins (when none is
   feasible, the one with the lowest p95 is reported as a miss);
2. cache sizes from where the winning run served each adapter: GPU slots
   from the distinct adapters a pod serves in 10 minutes (p95, a power of
   two, 8 to 16), RAM from those of an hour (p95, x1.25), disk from a whole
   run (two files per adapter: the original and its slot-layout copy), none
   below the CRD's defaults;
   maxReplicas from the most GPUs the pool held (x1.25);
3. per-adapter minReplicas for adapters whose demand kept them on two
   homes or more on average;
4. a last run with exactly these settings gives the reported outcome.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .costs import CostProfile
from .fleet import FleetConfig, Policy, SimResult, simulate
from .workload import Workload

UTILIZATIONS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


@dataclass(frozen=True)
class Target:
    value: float
    ratio: bool  # True: p95 latency / pure inference; False: seconds

    @staticmethod
    def parse(text: str) -> Target:
        t = text.strip().lower()
        if t.endswith("x"):
            return Target(float(t[:-1]), True)
        if t.endswith("%"):  # "10%": within 10% of pure inference
            return Target(1.0 + float(t[:-1]) / 100.0, True)
        return Target(float(t.removesuffix("s")), False)

    def of(self, summary: Mapping[str, Any]) -> float:
        return float(summary["p95_x"] if self.ratio else summary["p95_s"])

    def __str__(self) -> str:
        return f"{self.value:g}x pure inference" if self.ratio else f"{self.value:g} s"


@dataclass
class Candidate:
    settings: dict[str, Any]
    summary: dict[str, Any]
    pools: dict[str, dict[str, Any]]
    met: bool


@dataclass
class PlanResult:
    target: Target
    pools: dict[str, dict[str, Any]]  # pool -> BaseModelPool spec fragment (CRD field names)
    adapters: dict[str, int]  # adapter -> recommended minReplicas (only those above 1)
    outcome: SimResult
    summary: dict[str, Any]
    pool_summaries: dict[str, dict[str, Any]]
    met: bool
    candidates: list[Candidate] = field(default_factory=list)


def pool_summaries(r: SimResult, w: Workload) -> dict[str, dict[str, Any]]:
    """The summary's latency figures per pool (base model)."""
    out = {}
    base = w.catalog.base[w.adapter] if len(w) else np.zeros(0, dtype=np.int16)
    for k, name in enumerate(w.catalog.bases):
        m = r.measured & ~r.rejected & (base == k)
        if not m.any():
            continue
        lat, ratio = r.latency[m], r.latency[m] / r.inference[m]
        ps = r.pool_series.get(name, {})
        pods = ps.get("pods", np.zeros(0))
        out[name] = {
            "requests": int(m.sum()),
            "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)),
            "p99_s": float(np.percentile(lat, 99)),
            "p95_x": float(np.percentile(ratio, 95)),
            "p99_x": float(np.percentile(ratio, 99)),
            "max_pods": int(pods.max()) if len(pods) else 0,
            "mean_pods": float(pods.mean()) if len(pods) else 0.0,
        }
    return out


def _pool_specs(
    base_specs: Mapping[str, Mapping[str, Any]], bases: Sequence[str], settings: Mapping[str, Any], max_replicas: int
) -> dict[str, dict[str, Any]]:
    out = {}
    for b in bases:
        spec = copy.deepcopy(dict(base_specs.get(b) or {"model": {"name": b}}))
        spec["minReplicas"] = settings["minReplicas"]
        spec["maxReplicas"] = max(settings["minReplicas"], int(spec.get("maxReplicas") or max_replicas))
        spec["replicas"] = settings["minReplicas"]
        a = dict(spec.get("autoscaling") or {})
        a["targetUtilization"] = settings["targetUtilization"]
        a["scaleDownStabilizationSeconds"] = settings["scaleDownStabilizationSeconds"]
        spec["autoscaling"] = a
        if "adapterCache" in settings:
            spec["adapterCache"] = {**dict(spec.get("adapterCache") or {}), **settings["adapterCache"][b]}
        out[b] = spec
    return out


def _run(
    w: Workload,
    policy: Policy,
    costs: CostProfile,
    specs: dict[str, dict[str, Any]],
    adapters: Mapping[str, Mapping[str, Any]],
    seed: int,
    measure_from_s: float,
) -> SimResult:
    cfg = FleetConfig(costs=costs, pools=specs, adapters=adapters, seed=seed, measure_from_s=measure_from_s)
    return simulate(w, policy, cfg)


def _pow2(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, n))))


def cache_sizes(r: SimResult, w: Workload) -> dict[str, dict[str, int]]:
    """adapterCache per pool from where the run served each adapter (see the module docstring)."""
    out = {}
    base = w.catalog.base[w.adapter]
    mb = w.catalog.mb[w.adapter]
    for k, name in enumerate(w.catalog.bases):
        m = r.measured & ~r.rejected & (base == k) & (r.pod >= 0)
        if not m.any():
            continue
        pod, a, t = r.pod[m].astype(np.int64), w.adapter[m].astype(np.int64), r.start[m]
        size = float(np.percentile(mb[m], 95))

        def distinct_p95(window_s: float, pod=pod, a=a, t=t) -> float:
            key = np.unique(np.stack([pod, (t // window_s).astype(np.int64), a]), axis=1)
            _, per = np.unique(key[:2], axis=1, return_counts=True)
            return float(np.percentile(per, 95))

        # Never below the CRD's defaults (8 slots, 8 GiB, 50 GiB): host RAM and disk are cheap next to a
        # GPU-hour, and a slot copy from RAM costs milliseconds, so more than 16 slots (GPU memory) buys nothing.
        slots = min(16, max(8, _pow2(distinct_p95(600.0))))
        ram_mb = max(8192, math.ceil(distinct_p95(3600.0) * size * 1.25 / 1024) * 1024)
        pairs = np.unique(np.stack([pod, a]), axis=1)
        _, per_pod = np.unique(pairs[0], return_counts=True)
        disk_mb = max(51200, math.ceil(float(per_pod.max()) * 2 * size * 1.25 / 1024) * 1024, ram_mb)
        out[name] = {"gpuSlots": int(slots), "ramCacheMB": int(ram_mb), "diskCacheMB": int(disk_mb)}
    return out


def plan(
    w: Workload,
    target: Target,
    costs: CostProfile,
    policy: Policy,
    base_specs: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    measure_from_s: float = 0.0,
    max_replicas: int = 64,
    min_replicas: Sequence[int] = (1, 2),
    scale_down_s: Sequence[int] = (300, 900),
    utilizations: Sequence[float] = UTILIZATIONS,
) -> PlanResult:
    base_specs = base_specs or {}
    bases = [b for b in w.catalog.bases if ((w.catalog.base[w.adapter] == w.catalog.bases.index(b)).any())]
    tried: dict[tuple, Candidate] = {}

    def evaluate(settings: dict[str, Any]) -> Candidate:
        key = (settings["minReplicas"], settings["targetUtilization"], settings["scaleDownStabilizationSeconds"])
        if key not in tried:
            specs = _pool_specs(base_specs, bases, settings, max_replicas)
            r = _run(w, policy, costs, specs, {}, seed, measure_from_s)
            pools = pool_summaries(r, w)
            met = all(target.of(p) <= target.value for p in pools.values())
            tried[key] = Candidate(dict(settings), r.summary(), pools, met)
        return tried[key]

    best: Candidate | None = None
    for mr in min_replicas:
        for sd in scale_down_s:
            # Bisection over utilisations, high (cheap) to low (fast): the first that meets the target.
            lo, hi = 0, len(utilizations) - 1
            found = None
            while lo <= hi:
                mid = (lo + hi) // 2
                c = evaluate(
                    {"minReplicas": mr, "targetUtilization": utilizations[mid], "scaleDownStabilizationSeconds": sd}
                )
                if c.met:
                    found, hi = c, mid - 1
                else:
                    lo = mid + 1
            if found is not None and (
                best is None or not best.met or found.summary["gpu_hours"] < best.summary["gpu_hours"]
            ):
                best = found
    if best is None:  # nothing met the target: the fastest candidate, reported as a miss
        best = min(tried.values(), key=lambda c: (max(target.of(p) for p in c.pools.values()), c.summary["gpu_hours"]))
    # Cache sizes and per-adapter minimums from the winning run, then the final run with everything applied.
    specs = _pool_specs(base_specs, bases, best.settings, max_replicas)
    r = _run(w, policy, costs, specs, {}, seed, measure_from_s)
    settings = dict(best.settings)
    settings["adapterCache"] = cache_sizes(r, w)
    measured_s = max(1.0, w.duration_s - measure_from_s)
    adapters = {
        n: int(round(s / measured_s))
        for n, s in r.extra.get("replication_seconds", {}).items()
        if s / measured_s >= 1.5
    }
    final_specs = _pool_specs(base_specs, bases, settings, max_replicas)
    final = _run(
        w, policy, costs, final_specs, {n: {"minReplicas": v} for n, v in adapters.items()}, seed, measure_from_s
    )
    pools_out = pool_summaries(final, w)
    recommended = {}
    for b in bases:
        most = pools_out.get(b, {}).get("max_pods", settings["minReplicas"])
        recommended[b] = {
            "minReplicas": settings["minReplicas"],
            "maxReplicas": max(settings["minReplicas"] + 1, math.ceil(most * 1.25)),
            "autoscaling": {
                "targetUtilization": settings["targetUtilization"],
                "scaleDownStabilizationSeconds": settings["scaleDownStabilizationSeconds"],
            },
            "adapterCache": settings["adapterCache"].get(b, {}),
        }
    met = all(target.of(p) <= target.value for p in pools_out.values())
    return PlanResult(target, recommended, adapters, final, final.summary(), pools_out, met, list(tried.values()))


# -- manifests ----------------------------------------------------------------------------------------


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v) if isinstance(v, Mapping) else v


def apply_to_manifests(
    docs: list[Any], pools: Mapping[str, Mapping[str, Any]], adapters: Mapping[str, int]
) -> tuple[list[Any], list[str]]:
    """Write the settings into BaseModelPool (by name) and LoraAdapter documents; (new docs, what changed).

    With a single pool planned and a single BaseModelPool in the file, they go
    together whatever the names. replicas is kept within minReplicas..maxReplicas
    (the CRD's validation rule); cache sizes already larger in the file are kept.
    """
    out = copy.deepcopy(docs)
    notes = []
    bmps = [d for d in out if isinstance(d, dict) and d.get("kind") == "BaseModelPool"]
    for d in bmps:
        name = str((d.get("metadata") or {}).get("name") or "")
        settings = pools.get(name)
        if settings is None and len(pools) == 1 and len(bmps) == 1:
            settings = next(iter(pools.values()))
        if settings is None:
            continue
        spec = d.setdefault("spec", {})
        settings = copy.deepcopy(dict(settings))
        # Cache sizes are minimums: a larger size already in the manifest stays.
        have = spec.get("adapterCache") or {}
        cache = settings.get("adapterCache") or {}
        for k, v in list(cache.items()):
            if isinstance(have.get(k), int) and have[k] > v:
                cache[k] = have[k]
        _merge(spec, settings)
        lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 4)
        spec["replicas"] = min(max(int(spec.get("replicas", 1)), lo), hi)
        notes.append(f"BaseModelPool {name}: {_flat(settings)}")
    for d in out:
        if not (isinstance(d, dict) and d.get("kind") == "LoraAdapter"):
            continue
        name = str((d.get("metadata") or {}).get("name") or "")
        if name in adapters:
            spec = d.setdefault("spec", {})
            spec["minReplicas"] = int(adapters[name])
            spec["maxReplicas"] = max(int(spec.get("maxReplicas", 8)), int(adapters[name]))
            notes.append(f"LoraAdapter {name}: minReplicas={adapters[name]}")
    if not notes:
        raise ValueError(
            "no BaseModelPool in the file matches the planned pools "
            f"({', '.join(sorted(pools))}); name one after its pool"
        )
    return out, notes


def _flat(d: Mapping[str, Any], prefix: str = "") -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            parts.append(_flat(v, f"{prefix}{k}."))
        else:
            parts.append(f"{prefix}{k}={v}")
    return ", ".join(parts)


def apply_to_file(path: str | Path, pools: Mapping[str, Mapping[str, Any]], adapters: Mapping[str, int]) -> list[str]:
    p = Path(path)
    docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    new, notes = apply_to_manifests(docs, pools, adapters)
    p.write_text(yaml.safe_dump_all(new, sort_keys=False))
    return notes


def recommendation_yaml(result: PlanResult) -> str:
    """The settings as YAML documents: BaseModelPool spec fragments, then LoraAdapter minReplicas."""
    docs: list[dict[str, Any]] = []
    for name, spec in result.pools.items():
        docs.append(
            {"apiVersion": "loraplex.io/v1alpha1", "kind": "BaseModelPool", "metadata": {"name": name}, "spec": spec}
        )
    for name, n in sorted(result.adapters.items(), key=lambda kv: (-kv[1], kv[0])):
        docs.append(
            {
                "apiVersion": "loraplex.io/v1alpha1",
                "kind": "LoraAdapter",
                "metadata": {"name": name},
                "spec": {"minReplicas": n},
            }
        )
    return yaml.safe_dump_all(docs, sort_keys=False)
