"""The fleet simulator: pools of one-GPU pods serving a workload, event by event.

What runs is the project's own code, not a model of it:
- routing: `inference_pod.router.placement.choose_endpoint` (rendezvous
  homes, least outstanding among them, spill over the load bound), fed the
  outstanding counts of the sidecar the request entered (its own view), or
  `placement.choose_endpoint_cost` (the sidecar's `routing.policy: cost`) on
  a chosen load view, or `policies.choose_endpoint_tiered`; the attempts
  (idle probes, then the plain order) are `placement.attempt_plan`'s, as in
  the sidecar;
- sizing: `loraplex_operator.sizing.decide` every pollIntervalSeconds on
  the pool's rate over the sidecars' 60 s window
  (`inference_pod.router_stats.WindowCounter`), mean service time and
  requests in flight; per-adapter homes through `raw_replicas`,
  `stabilized_need` and `adapter_replication`, as the autoscaler does;
- adapter tiers: `inference_pod.lru.BudgetLRU` for GPU slots (one slot per
  adapter), host RAM and local disk (bytes), with the worker's order:
  prefetch into RAM when a request arrives, copy into a slot when its job
  starts, LRU eviction in each tier;
- pool settings: a BaseModelPool spec (CRD field names) through the
  operator's `specs.parse_pool_spec`, the same object `loraplex plan` writes.

The model around that code: each pod is one GPU running one job at a time
from a FIFO queue of `limits.queueSize` (a full queue answers 429 and the
sidecar tries the next candidate, `max_attempts` in all); a request enters
the sidecar of a random ready pod of its pool (the Service); a pool with no
ready pod holds requests until one is ready (the activator); new pods are
ready `pod_start_s` after the decision; scale-down removes the newest pods,
which finish their queue first. A pod holds its GPU from its creation to
its release. Ordering: events at the same time run in the order they were
scheduled, and before an arrival at that time (`events.EventQueue`).

Three kinds of policy: `dedicated` (a deployment per adapter, minReplicas 0:
the seed's "before"), `seed` (shared pools, random routing, diffusers-style
load + unload whenever a pod switches adapter: the seed's "after") and
`loraplex` (as shipped, with the options in `Policy`).
"""

from __future__ import annotations

import math
import time as _time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import policies
from .costs import SDXL_A10G, CostProfile
from .events import EventQueue
from .project import (
    BudgetExceeded,
    BudgetLRU,
    Load,
    PoolSpec,
    ScalingPolicy,
    WindowCounter,
    adapter_replication,
    decide,
    parse_pool_spec,
    placement,
    raw_replicas,
    stabilized_need,
)
from .workload import Workload

# Where a request's adapter was found when its job started.
T_GPU, T_RAM, T_DISK, T_SOURCE, T_SWITCH, T_NONE = range(6)
TIER_NAMES = ("gpu", "ram", "disk", "source", "switch", "none")

_EV_READY, _EV_FETCH, _EV_DONE, _EV_TICK, _EV_SAMPLE, _EV_WAKE = range(6)
# Where an adapter is on a pod (bits of Fleet.where).
_IN_SLOT, _IN_RAM, _ON_DISK, _FETCHING = 1, 2, 4, 8
MB = 1 << 20


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str = "loraplex"  # dedicated | seed | loraplex
    routing: str = "rendezvous"  # rendezvous (placement.choose_endpoint) | tiered | cost
    load_view: str = "local"  # local: the entry sidecar's own counts | global: true in-flight |
    # gossip: true in-flight every gossip_s, plus the sidecar's own since
    gossip_s: float = 1.0
    gateways: int = 0  # >0: requests enter through this many gateway sidecars (no worker)
    # instead of a random pod's sidecar; each routes by its own view
    idle_probe: int = 0  # try this many candidates "only if idle" (a busy pod answers 429 at
    # once) before the best one unconditionally
    max_attempts: int | None = None  # attempts per request, probes included (None: FleetConfig.max_attempts)
    tier_info: str = "exact"  # cost routing: exact (each pod's tiers) | homes (home = warm, else cold)
    demand_homes: bool = True  # per-adapter home counts from demand (the operator), else minReplicas
    churn_budget: int | None = None  # at most this many adapters change home count per poll
    prefetch: str = ""  # "" | homes | all | catalog: what a new pod brings to its disk tier
    # (homes first; all: then the most requested; catalog: then the rest)
    prefetch_limit: int = 500  # most-requested adapters considered for prefetch
    sizing: str = "shipped"  # shipped: sizing.raw_replicas | inflight: policies.inflight_raw_replicas
    headroom: int = 0  # inflight sizing: idle pods kept beyond those in flight
    wait_budget_s: float | None = None  # latency-target sizing: p95 queueing delay budget (None: utilisation only)
    target_utilization: float | None = None  # override the pool spec's autoscaling.targetUtilization
    min_replicas: int | None = None  # override the pool spec's minReplicas


def default_pool_spec(base: str) -> dict[str, Any]:
    return {"model": {"name": base}, "minReplicas": 1, "maxReplicas": 64}


DEDICATED_SPEC: dict[str, Any] = {
    # One deployment per adapter, scaled to zero when idle (defaults of the seed's endpoints: 15 min idle).
    "model": {"name": "dedicated"},
    "minReplicas": 0,
    "maxReplicas": 64,
    "replicas": 0,
    "autoscaling": {"idleToZeroSeconds": 900},
}


@dataclass
class FleetConfig:
    costs: CostProfile = SDXL_A10G
    pools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # base -> BaseModelPool spec
    adapters: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> LoraAdapter spec fragment
    dedicated: Mapping[str, Any] = field(default_factory=lambda: dict(DEDICATED_SPEC))
    seed: int = 0
    measure_from_s: float = 0.0  # metrics and GPU-hours from this time on (earlier: warm-up)
    sample_s: float = 60.0
    stats_window_s: float = 60.0  # the sidecars' rate window
    max_attempts: int = 3
    record_pools: bool = True  # per-pool time series (shared policies)


@dataclass
class SimResult:
    policy: str
    kind: str
    arrival: np.ndarray
    latency: np.ndarray  # seconds, client-visible (nan: rejected)
    inference: np.ndarray  # seconds of pure inference of each request
    tier: np.ndarray  # int8: TIER_NAMES index
    swap_s: np.ndarray
    waited: np.ndarray  # bool: arrived when its pool had no ready pod
    rejected: np.ndarray  # bool: 429 from every candidate
    measured: np.ndarray  # bool: arrival >= measure_from_s
    gpu_seconds: float
    pod_starts: int
    series: dict[str, np.ndarray]
    pool_series: dict[str, dict[str, np.ndarray]]
    wall_s: float
    pod: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # serving pod's id per request
    start: np.ndarray = field(default_factory=lambda: np.zeros(0))  # when its job started
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        m = self.measured & ~self.rejected
        lat, inf = self.latency[m], self.inference[m]
        ratio = lat / inf if len(lat) else np.zeros(0)
        n = int(m.sum())
        tiers = np.bincount(self.tier[m], minlength=len(TIER_NAMES)) / max(1, n)

        def pct(a: np.ndarray, q: float) -> float:
            return float(np.percentile(a, q)) if len(a) else float("nan")

        gpus = self.series.get("gpus", np.zeros(0))
        t = self.series.get("t", np.zeros(0))
        sel = t >= (self.arrival[self.measured].min() if self.measured.any() else 0)
        return {
            "policy": self.policy,
            "requests": n,
            "gpu_hours": self.gpu_seconds / 3600.0,
            "p50_s": pct(lat, 50),
            "p95_s": pct(lat, 95),
            "p99_s": pct(lat, 99),
            "p50_x": pct(ratio, 50),
            "p95_x": pct(ratio, 95),
            "p99_x": pct(ratio, 99),
            "mean_inference_s": float(inf.mean()) if n else float("nan"),
            "swap_ram": float(tiers[T_RAM]),
            "swap_disk": float(tiers[T_DISK]),
            "swap_source": float(tiers[T_SOURCE]),
            "swap_switch": float(tiers[T_SWITCH]),
            "cold_starts": self.pod_starts,
            "waited": int((self.waited & self.measured).sum()),
            "rejected": int((self.rejected & self.measured).sum()),
            "max_gpus": int(gpus[sel].max()) if sel.any() else 0,
            "mean_gpus": float(gpus[sel].mean()) if sel.any() else 0.0,
            "wall_s": self.wall_s,
        }


# -- state ---------------------------------------------------------------------------------------------


class _Pod:
    __slots__ = (
        "name",
        "pool",
        "born",
        "ready",
        "draining",
        "released",
        "queue",
        "running",
        "inflight",
        "slots",
        "ram",
        "disk",
        "fetching",
        "last_adapter",
        "fetch_free_at",
        "uid",
    )

    def __init__(self, name: str, pool: _Pool, born: float, spec: PoolSpec | None) -> None:
        self.name = name
        self.pool = pool
        self.born = born
        self.ready = False
        self.draining = False
        self.released: float | None = None
        self.queue: deque[int] = deque()
        self.running = -1
        self.inflight = 0
        cache = spec.adapter_cache if spec is not None else None
        self.slots: BudgetLRU[int] = BudgetLRU(cache.gpu_slots if cache else 1)
        self.ram: BudgetLRU[int] = BudgetLRU(cache.ram_cache_mb * MB if cache else 0)
        self.disk: BudgetLRU[int] = BudgetLRU(cache.disk_cache_mb * MB if cache else 0)
        self.fetching: dict[str, tuple[float, int, bool]] = {}  # name -> (done time, tier, into RAM)
        self.last_adapter = -1
        self.fetch_free_at = born
        self.uid = -1


class _Pool:
    def __init__(self, name: str, spec: PoolSpec, policy: Policy, window_s: float, replicas: int) -> None:
        self.name = name
        self.spec = spec
        a = spec.autoscaling
        self.target = policy.target_utilization or a.target_utilization
        min_r = spec.min_replicas if policy.min_replicas is None else policy.min_replicas
        self.scaling = ScalingPolicy(
            min_r,
            max(min_r, spec.max_replicas),
            self.target,
            a.scale_up_stabilization_seconds,
            a.scale_down_stabilization_seconds,
            a.idle_to_zero_seconds,
        )
        self.autoscale = a.enabled
        self.poll_s = float(a.poll_interval_seconds)
        self.load_bound = spec.routing.load_bound
        self.queue_size = spec.limits.queue_size
        self.replicas = replicas
        self.history: tuple[tuple[float, int], ...] = ()
        self.pods: list[_Pod] = []  # live (starting or ready), oldest first
        self.by_name: dict[str, _Pod] = {}
        self.ready: tuple[str, ...] = ()
        self.serial = 0
        self.arrivals = WindowCounter(window_s)
        self.service = WindowCounter(window_s)
        self.service_total = 0.0
        self.service_count = 0
        self.in_flight = 0
        self.last_request: float | None = None
        self.waiting: deque[int] = deque()
        self.adapter_rates: dict[str, WindowCounter] = {}
        self.adapter_requests: dict[str, int] = {}
        self.needs: dict[str, tuple[int, float]] = {}
        self.replication: dict[str, int] = {}
        self.views: dict[str, dict[str, int]] = {}
        self.true_out: dict[str, int] = {}
        self.snap: dict[str, int] = {}  # gossip: true in-flight at snap_t
        self.snap_t = -math.inf
        self.deltas: dict[str, dict[str, int]] = {}  # gossip: each sidecar's own sends since snap_t
        self.hot_until = 0.0  # dedicated: poll every tick until then
        self.wake_at = math.inf


# -- the simulator -------------------------------------------------------------------------------------


@contextmanager
def _memo_ranking(memos: dict[int, tuple[tuple[str, ...], dict[str, list[str]]]]) -> Iterator[None]:
    """Memoise placement.rank_endpoints for the pools' current endpoint tuples (it is pure; the sim asks the
    same adapter's ranking over the same endpoints many times). Restored on exit."""
    original = placement.rank_endpoints

    def rank(key: str, endpoints: Any) -> list[str]:
        ent = memos.get(id(endpoints))
        if ent is not None and ent[0] is endpoints:
            cache = ent[1]
            r = cache.get(key)
            if r is None:
                r = cache[key] = original(key, endpoints)
            return r
        return original(key, endpoints)

    placement.rank_endpoints = rank  # type: ignore[assignment]
    try:
        yield
    finally:
        placement.rank_endpoints = original  # type: ignore[assignment]


class Fleet:
    def __init__(self, workload: Workload, policy: Policy, config: FleetConfig | None = None) -> None:
        self.w = workload
        self.p = policy
        self.cfg = config or FleetConfig()
        self.costs = self.cfg.costs
        self.rng = np.random.default_rng([self.cfg.seed, 3])
        self.q = EventQueue()
        cat = workload.catalog
        self.names = cat.names
        self.base_of = [cat.bases[b] for b in cat.base.tolist()]
        self.mb = cat.mb.astype(float).tolist()
        self.base_factor = [cat.base_factor.get(b, 1.0) for b in cat.bases]
        n = len(workload)
        self.latency = np.full(n, np.nan)
        self.tier = np.full(n, T_NONE, dtype=np.int8)
        self.swap = np.zeros(n)
        self.waited = np.zeros(n, dtype=bool)
        self.rejected = np.zeros(n, dtype=bool)
        self.start = np.zeros(n)
        self.pod_of = np.full(n, -1, dtype=np.int32)
        self.probe_hops = np.zeros(n, dtype=np.int8)  # idle probes answered "busy" before the request went
        self.req_pod: list[_Pod | None] = [None] * n
        self.req_entry: list[str | None] = [None] * n
        self.t_arr = workload.t.tolist()
        self.a_arr = workload.adapter.tolist()
        base_idx = workload.catalog.base[workload.adapter]
        factors = np.array(self.base_factor)[base_idx] if n else np.zeros(0)
        self.inference = (
            self.costs.inference_s
            * factors
            * (workload.steps / self.costs.ref_steps)
            * (workload.pixels / self.costs.ref_pixels)
        )
        self.inf_list = self.inference.tolist()
        self.pools: dict[str, _Pool] = {}
        self.gpu_seconds = 0.0
        self.pod_starts = 0
        self.gpus = 0
        self.busy = 0
        self.unfinished = 0
        self.memos: dict[int, tuple[tuple[str, ...], dict[str, list[str]]]] = {}
        self.series: dict[str, list[float]] = {"t": [], "gpus": [], "busy": [], "arrivals": [], "ready": []}
        self.pool_series: dict[str, dict[str, list[float]]] = {}
        self._arrivals_since_sample = 0
        self.hot: set[str] = set()
        self.adapter_min: dict[str, tuple[int, int, bool]] = {}
        for name, spec in self.cfg.adapters.items():
            self.adapter_min[name] = (
                int(spec.get("minReplicas", 1)),
                int(spec.get("maxReplicas", 8)),
                bool(spec.get("pinned", False)),
            )
        self.pinned = {n for n, (_, _, p) in self.adapter_min.items() if p}
        self.ready_count = 0
        self.where: dict[str, dict[str, int]] = {}  # adapter -> {pod name: _IN_SLOT | _IN_RAM | ...}
        self._index: dict[str, int] = {}
        self._svc_cache: dict[str, tuple[float, float]] = {}
        self.rep_seconds: dict[str, float] = {}  # adapter -> seconds x (homes above its minimum), for `plan`

    # -- setup --------------------------------------------------------------------------------------------

    def _pool_for(self, a: int) -> _Pool:
        if self.p.kind == "dedicated":
            name = self.names[a]
            pool = self.pools.get(name)
            if pool is None:
                spec = parse_pool_spec(dict(self.cfg.dedicated))
                pool = self.pools[name] = _Pool(name, spec, self.p, self.cfg.stats_window_s, 0)
            return pool
        return self.pools[self.base_of[a]]

    def _setup(self) -> None:
        if self.p.kind == "dedicated":
            return
        for base in self.w.catalog.bases:
            spec = parse_pool_spec(dict(self.cfg.pools.get(base) or default_pool_spec(base)))
            pool = _Pool(base, spec, self.p, self.cfg.stats_window_s, 0)
            self.pools[base] = pool
            # The pool starts at its spec.replicas (the scale subresource), within min..max.
            n0 = min(max(spec.replicas, pool.scaling.min_replicas), pool.scaling.max_replicas)
            for _ in range(n0):
                pod = self._new_pod(pool, 0.0)
                self._pod_ready(pod, 0.0)
            pool.replicas = n0
        self.q.push(0.0, _EV_TICK)

    # -- pods ---------------------------------------------------------------------------------------------

    def _new_pod(self, pool: _Pool, now: float) -> _Pod:
        pool.serial += 1
        pod = _Pod(f"{pool.name}-{pool.serial}", pool, now, pool.spec if self.p.kind == "loraplex" else None)
        pod.uid = self.pod_starts
        pool.pods.append(pod)
        pool.by_name[pod.name] = pod
        self.gpus += 1
        self.pod_starts += 1
        if now > 0:
            self.q.push(now + self.costs.pod_start_s, _EV_READY, pod)
            if self.p.prefetch and self.p.kind == "loraplex":
                self._prefetch_homes(pod, now)
        return pod

    def _set_ready(self, pool: _Pool) -> None:
        old = pool.ready
        pool.ready = tuple(sorted(p.name for p in pool.pods if p.ready))
        self.memos.pop(id(old), None)
        self.memos[id(pool.ready)] = (pool.ready, {})

    def _pod_ready(self, pod: _Pod, now: float) -> None:
        if pod.released is not None or pod.draining:
            return
        pod.ready = True
        self.ready_count += 1
        pool = pod.pool
        self._set_ready(pool)
        while pool.waiting:
            self._route(pool.waiting.popleft(), now, pool)

    def _release(self, pod: _Pod, now: float) -> None:
        pod.released = now
        self.gpus -= 1
        self.gpu_seconds += max(0.0, now - max(pod.born, self.cfg.measure_from_s))
        pod.pool.by_name.pop(pod.name, None)
        for lru in (pod.slots, pod.ram, pod.disk):
            for k in list(lru.keys()):
                self._unmark(k, pod, _IN_SLOT | _IN_RAM | _ON_DISK)
        for k in list(pod.fetching):
            self._unmark(k, pod, _FETCHING)
        pod.fetching.clear()

    def _mark(self, name: str, pod: _Pod, bit: int) -> None:
        d = self.where.get(name)
        if d is None:
            d = self.where[name] = {}
        d[pod.name] = d.get(pod.name, 0) | bit

    def _unmark(self, name: str, pod: _Pod, bits: int) -> None:
        d = self.where.get(name)
        if d is None:
            return
        v = d.get(pod.name, 0) & ~bits
        if v:
            d[pod.name] = v
        else:
            d.pop(pod.name, None)
            if not d:
                del self.where[name]

    def _set_fetch(self, pod: _Pod, name: str, entry: tuple[float, int, bool]) -> None:
        pod.fetching[name] = entry
        self._mark(name, pod, _FETCHING)

    def _scale_to(self, pool: _Pool, want: int, now: float) -> None:
        live = pool.pods
        while len(live) < want:
            self._new_pod(pool, now)
        if len(live) > want:
            # Newest first (a ReplicaSet removes not-ready, then the youngest pods).
            order = sorted(live, key=lambda p: (p.ready, p.born, p.name), reverse=False)
            starting = [p for p in order if not p.ready]
            ready = [p for p in order if p.ready]
            victims = (starting + ready[::-1])[: len(live) - want]
            for pod in victims:
                live.remove(pod)
                if pod.ready:
                    pod.ready = False
                    self.ready_count -= 1
                pod.draining = True
                if pod.running < 0 and not pod.queue:
                    self._release(pod, now)
            old_ready = pool.ready
            self._set_ready(pool)
            if self.p.prefetch and self.p.kind == "loraplex" and old_ready != pool.ready:
                self._rehome(pool, old_ready, now)

    # -- prefetch (policy) --------------------------------------------------------------------------------

    def _top_adapters(self, pool: _Pool) -> list[tuple[str, int]]:
        """The pool's most requested adapters so far (the sidecars' cumulative `requests`), best first."""
        return sorted(pool.adapter_requests.items(), key=lambda kv: (-kv[1], kv[0]))[: self.p.prefetch_limit]

    def _prefetch_homes(self, pod: _Pod, now: float) -> None:
        """A new pod fetches, while it starts, the adapters it will be a home for (then, with prefetch=all,
        the rest of the most requested) into its disk tier, the first half of its RAM budget into RAM."""
        pool = pod.pool
        endpoints = tuple(sorted({*pool.ready, pod.name}))
        top = self._top_adapters(pool)
        items = [(n, float(c), pool.replication.get(n, 1), int(2 * self.mb[self._idx(n)] * MB)) for n, c in top]
        chosen = policies.home_prefetch(pod.name, endpoints, items, pod.disk.budget)
        if self.p.prefetch in ("all", "catalog"):
            have = set(chosen)
            used = sum(size for n, _, _, size in items if n in have)
            rest = [(n, size) for n, _, _, size in items]
            if self.p.prefetch == "catalog":  # then every adapter of the pool's catalog (the operator knows them)
                base = self.w.catalog.bases.index(pool.name)
                rest += [
                    (self.names[i], int(2 * self.mb[i] * MB))
                    for i in range(len(self.names))
                    if self.w.catalog.base[i] == base and self.w.catalog.created[i] <= now
                ]
            for n, size in rest:
                if n not in have and used + size <= pod.disk.budget:
                    chosen.append(n)
                    have.add(n)
                    used += size
        self._queue_fetches(pod, chosen, now)

    def _rehome(self, pool: _Pool, old_ready: tuple[str, ...], now: float) -> None:
        """After pods left: each remaining pod fetches the adapters it has just become a home for."""
        new_ready = pool.ready
        if not new_ready or not self.p.prefetch:
            return
        todo: dict[str, list[str]] = {}
        for n, _ in self._top_adapters(pool):
            r = pool.replication.get(n, 1)
            old = set(placement.home_endpoints(n, old_ready, r)) if old_ready else set()
            for e in placement.home_endpoints(n, new_ready, r):
                if e not in old:
                    todo.setdefault(e, []).append(n)
        for e, names in todo.items():
            self._queue_fetches(pool.by_name[e], names, now)

    def _queue_fetches(self, pod: _Pod, names: list[str], now: float) -> None:
        """Background fetches, one after another on the pod's download channel; the first half of RAM too."""
        t = max(now, pod.fetch_free_at)
        ram_room = pod.ram.budget // 2 - pod.ram.used
        for n in names:
            if n in pod.disk or n in pod.ram or n in pod.fetching:
                continue
            mb = self.mb[self._idx(n)]
            t += self.costs.fetch_s("source", mb)
            into_ram = ram_room >= mb * MB
            if into_ram:
                ram_room -= int(mb * MB)
            self._set_fetch(pod, n, (t, T_SOURCE, into_ram))
            self.q.push(t, _EV_FETCH, (pod, n))
        pod.fetch_free_at = t

    # -- requests -----------------------------------------------------------------------------------------

    def _arrive(self, i: int, now: float) -> None:
        a = self.a_arr[i]
        pool = self._pool_for(a)
        name = self.names[a]
        pool.arrivals.add(now)
        pool.in_flight += 1
        pool.last_request = now
        self.unfinished += 1
        self._arrivals_since_sample += 1
        if self.p.kind == "loraplex":
            wc = pool.adapter_rates.get(name)
            if wc is None:
                wc = pool.adapter_rates[name] = WindowCounter(self.cfg.stats_window_s)
            wc.add(now)
            pool.adapter_requests[name] = pool.adapter_requests.get(name, 0) + 1
        if self.p.kind == "dedicated":
            pool.hot_until = now + self.cfg.stats_window_s + pool.poll_s
            if pool.name not in self.hot:
                self.hot.add(pool.name)
        if not pool.ready:
            self.waited[i] = True
            pool.waiting.append(i)
            return
        self._route(i, now, pool)

    def _route(self, i: int, now: float, pool: _Pool) -> None:
        ready = pool.ready
        if not ready:
            pool.waiting.append(i)
            return
        kind = self.p.kind
        by_name = pool.by_name
        if kind == "loraplex":
            a = self.a_arr[i]
            name = self.names[a]
            if self.p.gateways > 0:
                entry = f"gateway-{int(self.rng.integers(self.p.gateways))}" if self.p.gateways > 1 else "gateway-0"
            else:
                entry = ready[int(self.rng.integers(len(ready)))] if len(ready) > 1 else ready[0]
            view = self._view(pool, entry, now)
            rep = pool.replication.get(name) or self._min_homes(name)
            routing = self.p.routing
            if routing == "tiered":

                def tier_of(e: str, _n: str = name) -> int:
                    pod = by_name[e]
                    if _n in pod.slots:
                        return policies.IN_SLOT
                    if _n in pod.ram or _n in pod.fetching:
                        return policies.IN_RAM
                    if len(pod.slots) < pod.slots.budget:
                        return policies.FREE_SLOT
                    return policies.COLD

                cands = policies.choose_endpoint_tiered(name, ready, rep, view, pool.load_bound, tier_of)
            elif routing == "cost":
                cands = self._cost_candidates(name, a, ready, rep, view, pool, now)
            else:
                cands = placement.choose_endpoint(name, ready, rep, view, pool.load_bound)
            # The sidecar's own attempt plan: idle probes first, then the plain order (placement.attempt_plan).
            probes = 0
            attempts = self.p.max_attempts or self.cfg.max_attempts
            for e, if_idle in placement.attempt_plan(cands, attempts, self.p.idle_probe):
                pod = by_name[e]
                if if_idle:
                    if pod.running >= 0 or pod.queue:  # busy: refused at once, next candidate
                        probes += 1
                        continue
                elif len(pod.queue) >= pool.queue_size:
                    continue
                self._sent(pool, entry, e)
                self.req_entry[i] = entry  # a hop when it is not `e`: added at completion
                self.probe_hops[i] = probes
                self._dispatch(i, pod, now)
                return
            self._reject(i, pool)
            return
        # seed / dedicated: the Service picks a pod at random
        order = self.rng.permutation(len(ready)) if len(ready) > 1 else (0,)
        for k in list(order)[: max(1, self.cfg.max_attempts)]:
            pod = by_name[ready[int(k)]]
            if len(pod.queue) >= pool.queue_size:
                continue
            self._dispatch(i, pod, now)
            return
        self._reject(i, pool)

    def _view(self, pool: _Pool, entry: str, now: float) -> Mapping[str, int]:
        """The outstanding counts the entry sidecar routes by."""
        lv = self.p.load_view
        if lv == "global":
            return pool.true_out
        if lv == "gossip":
            if now - pool.snap_t >= self.p.gossip_s:
                pool.snap = dict(pool.true_out)
                pool.snap_t = now
                pool.deltas.clear()
            own = pool.deltas.get(entry)
            if not own:
                return pool.snap
            merged = dict(pool.snap)
            for k, v in own.items():
                merged[k] = merged.get(k, 0) + v
            return merged
        view = pool.views.get(entry)
        if view is None:
            view = pool.views[entry] = {}
        return view

    def _sent(self, pool: _Pool, entry: str, e: str) -> None:
        lv = self.p.load_view
        if lv == "local":
            view = pool.views[entry]
            view[e] = view.get(e, 0) + 1
        elif lv == "gossip":
            own = pool.deltas.setdefault(entry, {})
            own[e] = own.get(e, 0) + 1

    def _service_estimate(self, pool: _Pool, now: float) -> float:
        """Mean service time as the sidecars' stats report it (the cost profile's inference time before any)."""
        cached = self._svc_cache.get(pool.name)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        value = self._service_mean(pool, now)
        self._svc_cache[pool.name] = (now, value)
        return value

    def _service_mean(self, pool: _Pool, now: float) -> float:
        sn, ssum = pool.service.totals(now)
        if sn:
            return ssum / sn
        if pool.service_count:
            return pool.service_total / pool.service_count
        return self.costs.inference_s

    def _cost_candidates(
        self, name: str, a: int, ready: tuple[str, ...], rep: int, view: Mapping[str, int], pool: _Pool, now: float
    ) -> list[str]:
        c, mb = self.costs, self.mb[a]
        ram_s = c.to_slot_s(mb)
        source_s = c.fetch_s("source", mb) + ram_s
        warm: dict[str, float] = {}
        if self.p.tier_info == "exact":
            disk_s = c.fetch_s("disk", mb) + ram_s
            for e, bits in (self.where.get(name) or {}).items():
                if bits & _IN_SLOT:
                    warm[e] = c.resident_switch_s
                elif bits & (_IN_RAM | _FETCHING):
                    warm[e] = ram_s
                elif bits & _ON_DISK:
                    warm[e] = disk_s
        return placement.choose_endpoint_cost(
            name,
            ready,
            rep,
            view,
            self._service_estimate(pool, now),
            warm,
            home_s=source_s if self.p.tier_info == "exact" else ram_s,
            cold_s=source_s,
        )

    def _min_homes(self, name: str) -> int:
        spec = self.adapter_min.get(name)
        if spec is None:
            return 1  # adapter_replication(0, 1, 8): the LoraAdapter defaults
        return adapter_replication(0, spec[0], spec[1])

    def _reject(self, i: int, pool: _Pool) -> None:
        self.rejected[i] = True
        pool.in_flight -= 1
        self.unfinished -= 1

    def _dispatch(self, i: int, pod: _Pod, now: float) -> None:
        self.req_pod[i] = pod
        self.pod_of[i] = pod.uid
        pod.inflight += 1
        pool = pod.pool
        pool.true_out[pod.name] = pool.true_out.get(pod.name, 0) + 1
        if self.p.kind == "loraplex":
            a = self.a_arr[i]
            name = self.names[a]
            if name not in pod.slots and name not in pod.ram:
                tier = T_DISK if name in pod.disk else T_SOURCE
                done = now + self.costs.fetch_s("disk" if tier == T_DISK else "source", self.mb[a])
                queued = pod.fetching.get(name)
                if queued is None or queued[0] > done:  # a background prefetch still queued: fetch it now
                    self._set_fetch(pod, name, (done, tier, True))
                    self.q.push(done, _EV_FETCH, (pod, name))
        pod.queue.append(i)
        if pod.running < 0:
            self._start_next(pod, now)

    def _start_next(self, pod: _Pod, now: float) -> None:
        i = pod.queue.popleft()
        pod.running = i
        self.busy += 1
        a = self.a_arr[i]
        kind = self.p.kind
        if kind == "loraplex":
            tier, swap = self._ensure_in_slot(pod, a, now)
        elif kind == "seed":
            if pod.last_adapter == a:
                tier, swap = T_GPU, 0.0
            else:
                lo, hi = self.costs.seed_load_s
                swap = float(self.rng.uniform(lo, hi))
                if pod.last_adapter >= 0:
                    ulo, uhi = self.costs.seed_unload_s
                    swap += float(self.rng.uniform(ulo, uhi))
                tier = T_SWITCH
                pod.last_adapter = a
        else:
            tier, swap = T_NONE, 0.0
        self.tier[i] = tier
        self.swap[i] = swap
        self.start[i] = now
        self.q.push(now + swap + self.inf_list[i], _EV_DONE, pod)

    def _ensure_in_slot(self, pod: _Pod, a: int, now: float) -> tuple[int, float]:
        name = self.names[a]
        mb = self.mb[a]
        c = self.costs
        if pod.slots.get(name) is not None:
            return T_GPU, c.resident_switch_s
        fetch = pod.fetching.get(name)
        if fetch is not None:
            done, tier, _ = fetch
            wait = max(0.0, done - now)
            self._fetched(pod, name, now)  # the job takes it now (the RAM put happens when the fetch ends)
            swap = wait + c.to_slot_s(mb)
        elif pod.ram.get(name) is not None:
            tier, swap = T_RAM, c.to_slot_s(mb)
        else:  # evicted from RAM since its prefetch: fetch again, on the GPU thread
            tier = T_DISK if name in pod.disk else T_SOURCE
            swap = c.fetch_s("disk" if tier == T_DISK else "source", mb) + c.to_slot_s(mb)
            self._store(pod, name, mb, tier, True)
        with suppress(BudgetExceeded):  # every slot pinned: the real worker answers 503; here it runs unslotted
            for victim, _ in pod.slots.put(name, 0, 1, pinned=name in self.pinned):
                self._unmark(victim, pod, _IN_SLOT)
            self._mark(name, pod, _IN_SLOT)
        return tier, swap

    def _store(self, pod: _Pod, name: str, mb: float, tier: int, into_ram: bool) -> None:
        pinned = name in self.pinned
        size = int(mb * MB)
        try:
            if tier == T_SOURCE or name not in pod.disk:
                for victim, _ in pod.disk.put(name, 0, 2 * size, pinned=pinned):  # original + slot-layout copy
                    self._unmark(victim, pod, _ON_DISK)
                self._mark(name, pod, _ON_DISK)
            else:
                pod.disk.get(name)
            if into_ram:
                for victim, _ in pod.ram.put(name, 0, size, pinned=pinned):
                    self._unmark(victim, pod, _IN_RAM)
                self._mark(name, pod, _IN_RAM)
        except BudgetExceeded:
            pass

    def _fetched(self, pod: _Pod, name: str, now: float) -> None:
        fetch = pod.fetching.pop(name, None)
        if fetch is None or pod.released is not None:
            return
        self._unmark(name, pod, _FETCHING)
        _, tier, into_ram = fetch
        self._store(pod, name, self.mb[self._idx(name)], tier, into_ram)

    def _idx(self, name: str) -> int:
        if not self._index:
            self._index = {n: i for i, n in enumerate(self.names)}
        return self._index[name]

    def _done(self, pod: _Pod, now: float) -> None:
        i = pod.running
        pod.running = -1
        self.busy -= 1
        pod.inflight -= 1
        pool = pod.pool
        pool.in_flight -= 1
        self.unfinished -= 1
        service = now - self.start[i]
        pool.service.add(now, service)
        pool.service_total += service
        pool.service_count += 1
        lat = now - self.t_arr[i]
        entry = self.req_entry[i]
        n = pool.true_out.get(pod.name, 1) - 1
        if n:
            pool.true_out[pod.name] = n
        else:
            pool.true_out.pop(pod.name, None)
        if self.p.load_view == "local" and entry is not None:
            view = pool.views.get(entry)
            if view is not None:
                n = view.get(pod.name, 1) - 1
                if n:
                    view[pod.name] = n
                else:
                    view.pop(pod.name, None)
        if entry is not None and entry != pod.name:
            lat += self.costs.hop_s
        lat += self.probe_hops[i] * self.costs.hop_s
        self.latency[i] = lat
        self.req_pod[i] = None
        if pod.queue:
            self._start_next(pod, now)
        elif pod.draining:
            self._release(pod, now)

    # -- the autoscaler -------------------------------------------------------------------------------------

    def _load(self, pool: _Pool, now: float) -> Load:
        span = max(1.0, min(self.cfg.stats_window_s, now))
        n, _ = pool.arrivals.totals(now)
        sn, ssum = pool.service.totals(now)
        mean = ssum / sn if sn else (pool.service_total / pool.service_count if pool.service_count else 0.0)
        return Load(n / span, mean, pool.in_flight)

    def _size(self, pool: _Pool, now: float) -> None:
        load = self._load(pool, now)
        if pool.autoscale:
            raw = None
            if self.p.sizing == "inflight":
                raw = policies.inflight_raw_replicas(
                    load.request_rate,
                    load.mean_service_s,
                    load.in_flight,
                    pool.target,
                    self.p.wait_budget_s,
                    headroom=self.p.headroom,
                )
            elif self.p.wait_budget_s is not None and load.request_rate > 0 and load.mean_service_s > 0:
                raw = policies.latency_raw_replicas(
                    load.request_rate, load.mean_service_s, load.in_flight, pool.target, self.p.wait_budget_s
                )
            decide_load = load
            if raw is not None and raw != raw_replicas(load, pool.target):
                # decide() computes raw from its Load: hand it one whose raw is this (busy = raw x target).
                decide_load = Load(raw * pool.target, 1.0, 0)
            d = decide(pool.scaling, pool.replicas, decide_load, now, pool.history, pool.last_request)
            pool.history = d.history
            if d.replicas != pool.replicas:
                pool.replicas = d.replicas
            if len(pool.pods) != pool.replicas:
                self._scale_to(pool, pool.replicas, now)
        if self.p.kind == "loraplex" and self.p.demand_homes:
            self._note_adapters(pool, load, now)

    def _note_adapters(self, pool: _Pool, load: Load, now: float) -> None:
        span = max(1.0, min(self.cfg.stats_window_s, now))
        down = float(pool.spec.autoscaling.scale_down_stabilization_seconds)
        wanted: dict[str, int] = {}
        demand: dict[str, float] = {}
        one_home = span * pool.target  # fewer requests than this x service time in the window: raw <= 1
        for name in list(pool.adapter_rates):
            n, _ = pool.adapter_rates[name].totals(now)
            prev = pool.needs.get(name)
            if n * load.mean_service_s <= one_home and (prev is None or prev[0] <= 1):
                # raw <= 1 and no raised need to stabilise: the homes are the adapter's minimum whatever
                # stabilized_need answers (adapter_replication(0 or 1, min, max) == min), so skip the calls.
                pool.needs.pop(name, None)
                if n == 0:
                    del pool.adapter_rates[name]
                if name in pool.replication:
                    wanted[name] = self._min_homes(name)
                continue
            rate = n / span
            raw = raw_replicas(Load(rate, load.mean_service_s), pool.target)
            need, since = stabilized_need(prev[0] if prev else None, prev[1] if prev else None, raw, now, down)
            lo, hi, _ = self.adapter_min.get(name, (1, 8, False))
            wanted[name] = adapter_replication(need, lo, hi)
            demand[name] = rate
            if n == 0 and need == 0:
                pool.needs.pop(name, None)
                del pool.adapter_rates[name]
            else:
                pool.needs[name] = (need, since)
        if self.p.churn_budget is not None:
            current = {n: pool.replication.get(n, self._min_homes(n)) for n in wanted}
            new = policies.budget_replication(current, wanted, self.p.churn_budget, demand)
        else:
            new = wanted
        if now >= self.cfg.measure_from_s:
            for name, r in pool.replication.items():
                self.rep_seconds[name] = self.rep_seconds.get(name, 0.0) + r * pool.poll_s
        for name, r in new.items():
            if r == self._min_homes(name):
                pool.replication.pop(name, None)
            else:
                pool.replication[name] = r

    def _tick(self, now: float) -> None:
        if self.p.kind == "dedicated":
            for name in list(self.hot):
                pool = self.pools[name]
                self._size(pool, now)
                if now >= pool.hot_until and pool.in_flight == 0 and pool.replicas <= 1:
                    self.hot.discard(name)
                    if pool.replicas == 1:
                        # Nothing changes until idleToZeroSeconds after its last request: sleep till then.
                        wake = (pool.last_request or now) + pool.scaling.idle_to_zero_s
                        wake = math.ceil(wake / pool.poll_s) * pool.poll_s
                        pool.wake_at = wake
                        self.q.push(wake, _EV_WAKE, pool)
            return
        for pool in self.pools.values():
            self._size(pool, now)

    def _wake(self, pool: _Pool, now: float) -> None:
        if pool.name in self.hot or pool.wake_at != now:
            return
        pool.wake_at = math.inf
        self._size(pool, now)
        if pool.replicas > 0:
            self.hot.add(pool.name)

    def _sample(self, now: float) -> None:
        s = self.series
        s["t"].append(now)
        s["gpus"].append(self.gpus)
        s["busy"].append(self.busy)
        s["ready"].append(self.ready_count)
        s["arrivals"].append(self._arrivals_since_sample / self.cfg.sample_s)
        self._arrivals_since_sample = 0
        if self.cfg.record_pools and self.p.kind != "dedicated":
            for name, pool in self.pools.items():
                ps = self.pool_series.setdefault(name, {"t": [], "pods": [], "ready": [], "busy": [], "rate": []})
                ps["t"].append(now)
                ps["pods"].append(len(pool.pods))
                ps["ready"].append(len(pool.ready))
                ps["busy"].append(sum(1 for p in pool.pods if p.running >= 0))
                ps["rate"].append(self._load(pool, now).request_rate)

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> SimResult:
        t0 = _time.perf_counter()
        with _memo_ranking(self.memos):
            self._run()
        # Pods still held at the end: count them to the end of the run.
        end = self.w.duration_s
        for pool in self.pools.values():
            for pod in list(pool.pods):
                if pod.released is None:
                    self.gpu_seconds += max(0.0, end - max(pod.born, self.cfg.measure_from_s))
        measured = self.w.t >= self.cfg.measure_from_s
        return SimResult(
            policy=self.p.name,
            kind=self.p.kind,
            arrival=self.w.t,
            latency=self.latency,
            inference=self.inference,
            tier=self.tier,
            swap_s=self.swap,
            waited=self.waited,
            rejected=self.rejected,
            measured=measured,
            gpu_seconds=self.gpu_seconds,
            pod_starts=self.pod_starts,
            series={k: np.array(v) for k, v in self.series.items()},
            pool_series={p: {k: np.array(v) for k, v in s.items()} for p, s in self.pool_series.items()},
            wall_s=_time.perf_counter() - t0,
            pod=self.pod_of,
            start=self.start,
            extra={"replication_seconds": dict(self.rep_seconds)},
        )

    def _run(self) -> None:
        self._setup()
        q = self.q
        t_arr, n = self.t_arr, len(self.t_arr)
        end = self.w.duration_s
        poll_s = min(
            (p.poll_s for p in self.pools.values()),
            default=float(parse_pool_spec(dict(self.cfg.dedicated)).autoscaling.poll_interval_seconds),
        )
        if self.p.kind == "dedicated":
            q.push(0.0, _EV_TICK)
        q.push(0.0, _EV_SAMPLE)
        i = 0
        while True:
            next_arr = t_arr[i] if i < n else math.inf
            if q and q.peek_time() <= next_arr:
                now, kind, payload = q.pop()
                if kind == _EV_DONE:
                    self._done(payload, now)
                elif kind == _EV_FETCH:
                    pod, name = payload
                    fetch = pod.fetching.get(name)
                    if fetch is not None and fetch[0] == now:
                        self._fetched(pod, name, now)
                elif kind == _EV_READY:
                    self._pod_ready(payload, now)
                elif kind == _EV_TICK:
                    self._tick(now)
                    if now < end or self.unfinished > 0:
                        q.push(now + poll_s, _EV_TICK)
                elif kind == _EV_SAMPLE:
                    if now <= end:
                        self._sample(now)
                        q.push(now + self.cfg.sample_s, _EV_SAMPLE)
                elif kind == _EV_WAKE:
                    self._wake(payload, now)
                if now >= end and i >= n and self.unfinished <= 0:
                    break
            elif i < n:
                self._arrive(i, next_arr)
                i += 1
            else:
                break


def simulate(workload: Workload, policy: Policy, config: FleetConfig | None = None) -> SimResult:
    """Run one policy over a workload. Deterministic for (workload, policy, config.seed)."""
    return Fleet(workload, policy, config).run()


SHIPPED = Policy("loraplex")
SEED_SHARED = Policy("seed shared pool", kind="seed")
DEDICATED = Policy("dedicated", kind="dedicated")
TIERED = Policy("loraplex, tier-aware", routing="tiered")
COST_GOSSIP = Policy("loraplex, cost routing", routing="cost", load_view="gossip", tier_info="homes")
IMPROVED = Policy(
    "loraplex, improved", routing="cost", load_view="gossip", tier_info="homes", idle_probe=3, max_attempts=4
)

NAMED_POLICIES: dict[str, Policy] = {
    "dedicated": DEDICATED,
    "seed": SEED_SHARED,
    "shipped": SHIPPED,
    "tiered": TIERED,
    "cost": COST_GOSSIP,
    "improved": IMPROVED,
}
