"""Workloads for the fleet simulator: who asks for which adapter, when. Pure (numpy, a seeded Generator).

A workload is a catalog of adapters (name, base model, size in MB, the time
it appears) and a time-sorted array of requests (time, adapter index, steps,
pixels). Generators:

- popularity: Zipf with exponent `s` over the adapters' popularity ranks;
  adapter index == popularity rank (0 is the most requested). Bases are
  spread evenly over the ranks (with the seed's split, 92% of the adapters,
  and so about 92% of the traffic, go to SDXL);
- arrivals: homogeneous Poisson, a diurnal day (a non-homogeneous Poisson
  process, sinusoidal rate between a trough and a peak, by thinning), or a
  two-state MMPP (Markov-modulated Poisson: quiet/burst states with
  exponential holding times);
- a flash crowd: an extra Poisson stream on one cold adapter for a while;
- a growing catalog: adapters created through the day at random popularity
  ranks; a request never names an adapter before it exists;
- a trace file: CSV with a header `time,adapter,steps,size` (size `WxH` or a
  pixel count; optional columns `base` and `adapter_mb`), to replay real traffic.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DAY_S = 86_400.0
SEED_BASE_SPLIT: tuple[tuple[str, float], ...] = (("sdxl", 0.92), ("sd15", 0.08))
# Inference time of a base relative to SDXL 1024x1024 (SD 1.5 at 512x512, 25 steps: about 0.3x).
DEFAULT_BASE_FACTOR = {"sdxl": 1.0, "sd15": 0.3, "flux": 2.5}


@dataclass
class Catalog:
    names: list[str]
    base: np.ndarray  # int16: index into `bases`, per adapter
    bases: tuple[str, ...]
    mb: np.ndarray  # float32: adapter size in MB
    created: np.ndarray  # float64: when the adapter appears (0 = from the start)
    base_factor: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_BASE_FACTOR))

    def __len__(self) -> int:
        return len(self.names)

    def base_of(self, i: int) -> str:
        return self.bases[int(self.base[i])]


@dataclass
class Workload:
    catalog: Catalog
    t: np.ndarray  # float64, sorted
    adapter: np.ndarray  # int32
    steps: np.ndarray  # int16
    pixels: np.ndarray  # int32
    duration_s: float
    description: str = ""

    def __len__(self) -> int:
        return len(self.t)

    def slice(self, start_s: float, end_s: float) -> Workload:
        m = (self.t >= start_s) & (self.t < end_s)
        return Workload(
            self.catalog,
            self.t[m] - start_s,
            self.adapter[m],
            self.steps[m],
            self.pixels[m],
            end_s - start_s,
            self.description,
        )


# -- catalog and popularity --------------------------------------------------------------------------


def spread_bases(n: int, split: Sequence[tuple[str, float]]) -> np.ndarray:
    """Base index per popularity rank: each base gets its share of every block of ranks (rank 0 -> first base)."""
    out = np.zeros(n, dtype=np.int16)
    acc = np.zeros(len(split))
    shares = np.array([s for _, s in split], dtype=float)
    shares = shares / shares.sum()
    for r in range(n):
        acc += shares
        k = int(np.argmax(acc))
        out[r] = k
        acc[k] -= 1.0
    return out


def make_catalog(
    n: int,
    split: Sequence[tuple[str, float]] = SEED_BASE_SPLIT,
    mb: float = 24.0,
    grow_from: int | None = None,
    grow_window: tuple[float, float] = (0.0, DAY_S),
    seed: int = 0,
    prefix: str = "lora",
) -> Catalog:
    """`n` adapters; with `grow_from`, only that many exist at t=0 and the rest appear uniformly in `grow_window`."""
    rng = np.random.default_rng([seed, 1])
    created = np.zeros(n, dtype=np.float64)
    if grow_from is not None and grow_from < n:
        new = rng.choice(np.arange(1, n), size=n - grow_from, replace=False)  # random popularity ranks
        created[np.sort(new)] = np.sort(rng.uniform(grow_window[0], grow_window[1], size=n - grow_from))
        created[new] = rng.permutation(created[new])
    width = len(str(n - 1))
    return Catalog(
        names=[f"{prefix}-{i:0{width}d}" for i in range(n)],
        base=spread_bases(n, split),
        bases=tuple(b for b, _ in split),
        mb=np.full(n, mb, dtype=np.float32),
        created=created,
    )


def zipf_weights(n: int, s: float) -> np.ndarray:
    """P(rank r) proportional to 1 / (r + 1)^s, r = 0..n-1."""
    w = 1.0 / np.power(np.arange(1, n + 1, dtype=np.float64), s)
    return w / w.sum()


def draw_adapters(p: np.ndarray, times: np.ndarray, created: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An adapter per arrival, from popularity `p`, among the adapters that exist at that time (rejection)."""
    out = rng.choice(len(p), size=len(times), p=p).astype(np.int32)
    if created.any():
        for _ in range(1000):
            bad = np.nonzero(created[out] > times)[0]
            if not len(bad):
                break
            out[bad] = rng.choice(len(p), size=len(bad), p=p)
    return out


# -- arrival processes -------------------------------------------------------------------------------


def poisson_times(rate: float, duration_s: float, rng: np.random.Generator, start_s: float = 0.0) -> np.ndarray:
    n = rng.poisson(rate * duration_s)
    return np.sort(rng.uniform(start_s, start_s + duration_s, size=n))


def nhpp_times(
    rate_fn: Callable[[np.ndarray], np.ndarray], rate_max: float, duration_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Non-homogeneous Poisson arrivals by thinning: candidates at rate_max, each kept with rate(t)/rate_max."""
    cand = poisson_times(rate_max, duration_s, rng)
    keep = rng.uniform(0.0, 1.0, size=len(cand)) * rate_max < rate_fn(cand)
    return cand[keep]


def diurnal_rate(
    mean: float, peak_to_trough: float = 3.0, peak_hour: float = 15.0
) -> Callable[[np.ndarray], np.ndarray]:
    """A sinusoidal day: the rate is `mean` on average, peak/trough = `peak_to_trough`, highest at `peak_hour`."""
    amp = (peak_to_trough - 1.0) / (peak_to_trough + 1.0)

    def rate(t: np.ndarray) -> np.ndarray:
        return mean * (1.0 + amp * np.cos(2 * math.pi * (np.asarray(t) / 3600.0 - peak_hour) / 24.0))

    return rate


def mmpp_times(
    rates: tuple[float, float], mean_hold_s: tuple[float, float], duration_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Two-state MMPP: rate rates[k] while in state k, holding times exponential with mean mean_hold_s[k]."""
    parts, t, state = [], 0.0, 0
    while t < duration_s:
        hold = min(rng.exponential(mean_hold_s[state]), duration_s - t)
        parts.append(poisson_times(rates[state], hold, rng, start_s=t))
        t += hold
        state = 1 - state
    return np.concatenate(parts) if parts else np.zeros(0)


# -- a whole workload --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadSpec:
    n_adapters: int = 2500
    zipf_s: float = 1.1
    rate: float = 0.2  # mean requests per second over the run
    traffic: str = "diurnal"  # poisson | diurnal | mmpp
    duration_s: float = DAY_S
    peak_to_trough: float = 3.0  # diurnal
    peak_hour: float = 15.0
    burst_factor: float = 4.0  # mmpp: burst rate / quiet rate
    burst_share: float = 0.1  # mmpp: fraction of time in the burst state
    burst_hold_s: float = 300.0  # mmpp: mean burst length
    flash_rate: float = 0.0  # flash crowd: extra requests per second on one cold adapter
    flash_start_s: float = 14 * 3600.0
    flash_duration_s: float = 900.0
    flash_rank_share: float = 0.8  # which adapter: this far down the popularity ranking
    grow_from: int | None = None  # catalog growth: adapters at t=0 (the rest appear during the run)
    split: tuple[tuple[str, float], ...] = SEED_BASE_SPLIT
    adapter_mb: float = 24.0
    steps: int = 25
    pixels: int = 1024 * 1024


def build_workload(spec: WorkloadSpec, seed: int = 0) -> Workload:
    rng = np.random.default_rng([seed, 2])
    cat = make_catalog(spec.n_adapters, spec.split, spec.adapter_mb, spec.grow_from, (0.0, spec.duration_s), seed)
    if spec.traffic == "poisson":
        times = poisson_times(spec.rate, spec.duration_s, rng)
    elif spec.traffic == "diurnal":
        fn = diurnal_rate(spec.rate, spec.peak_to_trough, spec.peak_hour)
        times = nhpp_times(fn, float(fn(np.array([spec.peak_hour * 3600.0]))[0]) * 1.0001, spec.duration_s, rng)
    elif spec.traffic == "mmpp":
        q, b = mmpp_rates(spec.rate, spec.burst_factor, spec.burst_share)
        quiet_hold = spec.burst_hold_s * (1 - spec.burst_share) / spec.burst_share
        times = mmpp_times((q, b), (quiet_hold, spec.burst_hold_s), spec.duration_s, rng)
    else:
        raise ValueError(f"unknown traffic {spec.traffic!r}: poisson, diurnal or mmpp")
    adapters = draw_adapters(zipf_weights(spec.n_adapters, spec.zipf_s), times, cat.created, rng)
    desc = f"{spec.traffic}, {spec.n_adapters} adapters, zipf {spec.zipf_s}, {spec.rate}/s mean"
    if spec.flash_rate > 0:
        rank = int(spec.flash_rank_share * (spec.n_adapters - 1))
        rank = next(
            r for r in range(rank, spec.n_adapters) if cat.base[r] == 0 and cat.created[r] <= spec.flash_start_s
        )
        ft = poisson_times(spec.flash_rate, spec.flash_duration_s, rng, start_s=spec.flash_start_s)
        times = np.concatenate([times, ft])
        adapters = np.concatenate([adapters, np.full(len(ft), rank, dtype=np.int32)])
        desc += f", flash crowd {spec.flash_rate}/s on {cat.names[rank]}"
    if spec.grow_from is not None:
        desc += f", catalog {spec.grow_from} -> {spec.n_adapters}"
    order = np.argsort(times, kind="stable")
    n = len(times)
    return Workload(
        cat,
        times[order],
        adapters[order],
        np.full(n, spec.steps, dtype=np.int16),
        np.full(n, spec.pixels, dtype=np.int32),
        spec.duration_s,
        desc,
    )


def mmpp_rates(mean: float, burst_factor: float, burst_share: float) -> tuple[float, float]:
    """Quiet and burst rates with the given mean, ratio and time share."""
    quiet = mean / (1 - burst_share + burst_share * burst_factor)
    return quiet, quiet * burst_factor


# -- statistics (for tests and reports) ---------------------------------------------------------------


def fit_zipf_exponent(counts: np.ndarray, top: int = 200) -> float:
    """Least-squares slope of log(count) on log(rank) over the `top` most requested (with count > 0)."""
    c = np.sort(np.asarray(counts, dtype=float))[::-1][:top]
    c = c[c > 0]
    r = np.arange(1, len(c) + 1, dtype=float)
    slope, _ = np.polyfit(np.log(r), np.log(c), 1)
    return float(-slope)


def distinct_per_window(w: Workload, window_s: float = 120.0) -> float:
    """Mean number of distinct adapters requested per window."""
    bins = (w.t // window_s).astype(np.int64)
    n_windows = max(1, int(math.ceil(w.duration_s / window_s)))
    pairs = np.unique(bins * (len(w.catalog) + 1) + w.adapter)
    return len(pairs) / n_windows


# -- trace files --------------------------------------------------------------------------------------


def parse_size(value: str) -> int:
    value = value.strip().lower()
    if not value:
        return 1024 * 1024
    if "x" in value:
        w, h = value.split("x", 1)
        return int(w) * int(h)
    return int(float(value))


def read_trace(
    path: str | Path,
    default_mb: float = 24.0,
    split: Sequence[tuple[str, float]] = SEED_BASE_SPLIT,
    default_steps: int = 25,
) -> Workload:
    """A CSV trace: time (seconds, any origin), adapter, steps, size; optional base, adapter_mb."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no requests")
    t0 = min(float(r["time"]) for r in rows)
    names: dict[str, int] = {}
    bases: list[str] = []
    mbs: list[float] = []
    first_base = split[0][0]
    t, a, steps, pixels = [], [], [], []
    for r in rows:
        name = r["adapter"].strip()
        if name not in names:
            names[name] = len(names)
            bases.append((r.get("base") or first_base).strip())
            mbs.append(float(r.get("adapter_mb") or default_mb))
        t.append(float(r["time"]) - t0)
        a.append(names[name])
        steps.append(int(r.get("steps") or default_steps))
        pixels.append(parse_size(r.get("size") or ""))
    base_names = tuple(dict.fromkeys(bases))
    cat = Catalog(
        names=list(names),
        base=np.array([base_names.index(b) for b in bases], dtype=np.int16),
        bases=base_names,
        mb=np.array(mbs, dtype=np.float32),
        created=np.zeros(len(names)),
    )
    order = np.argsort(np.array(t), kind="stable")
    tt = np.array(t)[order]
    return Workload(
        cat,
        tt,
        np.array(a, dtype=np.int32)[order],
        np.array(steps, dtype=np.int16)[order],
        np.array(pixels, dtype=np.int32)[order],
        float(math.ceil(tt[-1] + 1.0)),
        f"trace {Path(path).name}",
    )


def write_trace(w: Workload, path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["time", "adapter", "steps", "size", "base", "adapter_mb"])
        for t, a, s, p in zip(w.t, w.adapter, w.steps, w.pixels, strict=True):
            side = int(round(math.sqrt(int(p))))
            size = f"{side}x{side}" if side * side == int(p) else str(int(p))
            out.writerow(
                [f"{t:.3f}", w.catalog.names[a], int(s), size, w.catalog.base_of(int(a)), f"{float(w.catalog.mb[a]):g}"]
            )
