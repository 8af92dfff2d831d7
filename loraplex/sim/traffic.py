"""Real traffic into simulator workloads: sidecar `/v1/stats` documents and Prometheus query_range exports.

`/v1/stats` (inference_pod/router_stats.py): each document is one sidecar's
counters at one time. Collect them with e.g.

    while sleep 60; do for p in $PODS; do curl -s http://$p:8080/v1/stats; echo; done; done >> stats.jsonl

A file holds one JSON document, a JSON list of them, or one per line.
Documents are grouped into polls by their `time` (within `group_s`); every
sidecar counts each client request once, at its entry point, so a poll's sum
over sidecars is the pool's traffic (the operator's `stats.aggregate` does
the same for rates). With two polls or more, each adapter's requests in an
interval are the growth of its cumulative `requests` counters (a counter
that went down is a restarted sidecar: its new value counts), replayed at
uniform times within the interval. With one poll, each adapter's rate is
its `requests` over the sidecar's `uptimeSeconds`, replayed as Poisson
arrivals (optionally shaped into a diurnal day). A pool's
`meanServiceSeconds` sets its inference time in the cost profile.

Prometheus: the JSON of `/api/v1/query_range` (resultType matrix) for a
per-adapter request rate, e.g.

    sum by (pool, adapter) (rate(loraplex_router_adapter_requests_total[5m]))

Each sample is a rate over its step: the step's count is a Poisson draw of
rate x step, replayed at uniform times. Each sidecar gives a series of its
own to its first 100 (pool, adapter) pairs only (`--metrics-max-adapters`);
the rest arrive as one adapter named `_other` (docs/metrics.md). Without an `adapter` label (a
pool-level rate only), adapters are synthesised with Zipf popularity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .project import aggregate, parse_stats
from .workload import DAY_S, Catalog, Workload, diurnal_rate, nhpp_times, poisson_times, zipf_weights


def load_json_docs(paths: Iterable[str | Path]) -> list[Any]:
    """Every JSON document in the files: a document, a list of documents, or one document per line."""
    docs: list[Any] = []
    for path in paths:
        text = Path(path).read_text()
        try:
            doc = json.loads(text)
            docs.extend(doc if isinstance(doc, list) else [doc])
            continue
        except json.JSONDecodeError:
            pass
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line:
                try:
                    docs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON: {e}") from e
    return docs


@dataclass
class TrafficSummary:
    """What was read, for the plan's report."""

    source: str
    polls: int
    sidecars: int
    pools: dict[str, float]  # pool -> mean request rate
    service_s: dict[str, float]  # pool -> mean service seconds
    adapters: int
    duration_s: float


def _catalog(
    names: Sequence[str], pools: Sequence[str], adapter_mb: float, service: dict[str, float], inference_s: float
) -> Catalog:
    bases = tuple(dict.fromkeys(pools))
    cat = Catalog(
        names=list(names),
        base=np.array([bases.index(p) for p in pools], dtype=np.int16),
        bases=bases,
        mb=np.full(len(names), adapter_mb, dtype=np.float32),
        created=np.zeros(len(names)),
    )
    for b in bases:
        if service.get(b, 0) > 0:
            cat.base_factor[b] = service[b] / inference_s
        else:
            cat.base_factor.setdefault(b, 1.0)
    return cat


def _workload(
    cat: Catalog, times: list[np.ndarray], adapters: list[np.ndarray], duration_s: float, desc: str
) -> Workload:
    t = np.concatenate(times) if times else np.zeros(0)
    a = np.concatenate(adapters).astype(np.int32) if adapters else np.zeros(0, dtype=np.int32)
    order = np.argsort(t, kind="stable")
    n = len(t)
    return Workload(
        cat,
        t[order],
        a[order],
        np.full(n, 25, dtype=np.int16),
        np.full(n, 1024 * 1024, dtype=np.int32),
        duration_s,
        desc,
    )


def workload_from_stats(
    docs: Sequence[Any],
    inference_s: float,
    adapter_mb: float = 24.0,
    duration_s: float = DAY_S,
    peak_to_trough: float = 1.0,
    group_s: float = 10.0,
    seed: int = 0,
) -> tuple[Workload, TrafficSummary]:
    """A workload from sidecar /v1/stats documents (see the module docstring)."""
    docs = [d for d in docs if isinstance(d, dict) and isinstance(d.get("adapters"), dict)]
    if not docs:
        raise ValueError("no /v1/stats documents (objects with an 'adapters' map) in the input")
    docs.sort(key=lambda d: float(d.get("time") or 0.0))
    polls: list[list[dict]] = []
    for d in docs:
        t = float(d.get("time") or 0.0)
        if polls and t - float(polls[-1][0].get("time") or 0.0) <= group_s:
            polls[-1].append(d)
        else:
            polls.append([d])
    pool_of: dict[str, str] = {}
    for d in docs:
        for name, a in d["adapters"].items():
            if isinstance(a, dict) and isinstance(a.get("pool"), str):
                pool_of[name] = a["pool"]
    names = sorted(pool_of)
    index = {n: i for i, n in enumerate(names)}
    snaps = [aggregate([parse_stats(d) for d in poll]) for poll in polls]
    service: dict[str, float] = {}
    rates: dict[str, list[float]] = {}
    for s in snaps:
        for p, load in s.pools.items():
            if load.mean_service_s > 0:
                service.setdefault(p, load.mean_service_s)
            rates.setdefault(p, []).append(load.request_rate)
    cat = _catalog(names, [pool_of[n] for n in names], adapter_mb, service, inference_s)
    rng = np.random.default_rng([seed, 5])
    times, adapters = [], []

    def sidecar(d: dict) -> str:
        return str(d.get("pod") or d.get("mode") or "")

    if len(polls) >= 2:
        t0 = _poll_time(polls[0])
        prev: dict[str, dict[str, int]] = {sidecar(d): _counts(d) for d in polls[0]}
        for k in range(1, len(polls)):
            begin, end = _poll_time(polls[k - 1]) - t0, _poll_time(polls[k]) - t0
            for d in polls[k]:
                key = sidecar(d)
                now_c, old = _counts(d), prev.get(key, {})
                for name, c in now_c.items():
                    n = c - old.get(name, 0) if c >= old.get(name, 0) else c  # went down: a restarted sidecar
                    if n > 0 and name in index:
                        times.append(rng.uniform(begin, end, size=n))
                        adapters.append(np.full(n, index[name]))
                prev[key] = now_c
        duration = _poll_time(polls[-1]) - t0
        desc = f"/v1/stats replay, {len(polls)} polls"
    else:
        duration = duration_s
        fn = diurnal_rate(1.0, peak_to_trough) if peak_to_trough > 1.0 else None
        for d in polls[0]:
            up = float(d.get("uptimeSeconds") or 0.0)
            if up <= 0:
                continue
            for name, c in _counts(d).items():
                rate = c / up
                if rate <= 0 or name not in index:
                    continue
                if fn is None:
                    arrivals = poisson_times(rate, duration, rng)
                else:
                    arrivals = nhpp_times(
                        lambda x, r=rate: r * fn(x),  # type: ignore[misc]
                        rate * fn(np.array([15 * 3600.0]))[0] * 1.0001,
                        duration,
                        rng,
                    )
                times.append(arrivals)
                adapters.append(np.full(len(arrivals), index[name]))
        desc = "/v1/stats snapshot (rates over uptime)" + (f", diurnal {peak_to_trough}:1" if fn else "")
    w = _workload(cat, times, adapters, max(duration, 1.0), desc)
    summary = TrafficSummary(
        "stats",
        len(polls),
        len({sidecar(d) for d in docs}),
        {p: float(np.mean(r)) for p, r in rates.items()},
        service,
        len(names),
        w.duration_s,
    )
    return w, summary


def _counts(doc: dict) -> dict[str, int]:
    out = {}
    for name, a in doc.get("adapters", {}).items():
        if isinstance(a, dict):
            v = a.get("requests")
            if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
                out[name] = int(v)
    return out


def _poll_time(poll: list[dict]) -> float:
    return max(float(d.get("time") or 0.0) for d in poll)


def workload_from_prometheus(
    doc: Any,
    inference_s: float,
    adapter_mb: float = 24.0,
    n_adapters: int = 2500,
    zipf_s: float = 1.1,
    default_pool: str = "sdxl",
    seed: int = 0,
) -> tuple[Workload, TrafficSummary]:
    """A workload from a Prometheus query_range export (see the module docstring)."""
    data = doc.get("data", doc) if isinstance(doc, dict) else {}
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list) or not result:
        raise ValueError("not a Prometheus query_range export: no data.result matrix")
    series = []
    for s in result:
        metric = s.get("metric") or {}
        values = [(float(t), float(v)) for t, v in s.get("values") or [] if math.isfinite(float(v))]
        if values:
            series.append((metric, values))
    if not series:
        raise ValueError("the export has no samples")
    t0 = min(v[0][0] for _, v in series)
    t_end = max(v[-1][0] for _, v in series)
    steps = sorted({t for _, v in series for t, _ in v})
    step = float(np.median(np.diff(steps))) if len(steps) > 1 else 60.0
    rng = np.random.default_rng([seed, 6])
    per_adapter = all("adapter" in m for m, _ in series)
    times, adapters = [], []
    pool_rates: dict[str, list[float]] = {}
    if per_adapter:
        names = sorted({m["adapter"] for m, _ in series})
        pools = {m["adapter"]: m.get("pool", default_pool) for m, _ in series}
        index = {n: i for i, n in enumerate(names)}
        cat = _catalog(names, [pools[n] for n in names], adapter_mb, {}, inference_s)
        for m, values in series:
            for t, rate in values:
                n = rng.poisson(max(0.0, rate) * step)
                if n:
                    times.append(rng.uniform(t - t0 - step, t - t0, size=n).clip(0))
                    adapters.append(np.full(n, index[m["adapter"]]))
                pool_rates.setdefault(pools[m["adapter"]], []).append(rate)
    else:
        names = [f"lora-{i:05d}" for i in range(n_adapters)]
        pool = series[0][0].get("pool", default_pool)
        cat = _catalog(names, [pool] * n_adapters, adapter_mb, {}, inference_s)
        p = zipf_weights(n_adapters, zipf_s)
        for _, values in series:
            for t, rate in values:
                n = rng.poisson(max(0.0, rate) * step)
                if n:
                    times.append(rng.uniform(t - t0 - step, t - t0, size=n).clip(0))
                    adapters.append(rng.choice(n_adapters, size=n, p=p))
                pool_rates.setdefault(pool, []).append(rate)
    w = _workload(cat, times, adapters, max(step, t_end - t0), "Prometheus query_range replay")
    summary = TrafficSummary(
        "prometheus",
        len(steps),
        0,
        {p: float(np.sum(r)) / max(1, len(steps)) for p, r in pool_rates.items()},
        {},
        len(cat),
        w.duration_s,
    )
    return w, summary
