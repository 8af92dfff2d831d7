"""Router counters: per pool and per adapter, for `/v1/stats` and `/metrics`.

A client request is counted once, at the sidecar it reached (its entry
point: a pod's sidecar or the gateway). A request forwarded here by a peer
(it carries X-Loraplex-Hop) is counted only as `served`, so the operator can
sum `/v1/stats` over every sidecar of the pool without double counting.

Rates are arrivals over a sliding window (1-second buckets); until a sidecar
has been up for a whole window the rate divides by its uptime instead, so a
fresh pod does not under-report a burst. Service time is the worker's own
busy time for a request (adapter swap + inference, from its timing headers)
when it reports one, else the upstream round trip; queueing is excluded so
the autoscaler's `rate x service time` does not feed on its own backlog.

`/v1/stats` JSON shape (times are Unix seconds, durations seconds):

    {
      "pod": "sdxl-0" | null,            # this sidecar's endpoint name
      "mode": "pod" | "gateway",
      "time": 1712345678.1,
      "uptimeSeconds": 812.4,
      "windowSeconds": 60.0,
      "rejected": 3,                     # requests refused before a pool was known
      "table": {"loaded": true, "generation": 7, "lastReloadTime": 1712345600.0 | null,
                "reloadErrors": 0, "adapters": 2000,
                "lastReloadSeconds": 0.012 | null},   # parse + merge time of the last accepted update
      "pools": {
        "sdxl": {"requestRate": 0.5, "meanServiceSeconds": 1.9, "meanLatencySeconds": 2.3,
                 "inFlight": 2, "waiting": 0, "requests": 311, "errors": 1, "served": 120,
                 "lastRequestTime": 1712345677.9 | null}
      },
      "adapters": {
        "pixel-art": {"pool": "sdxl", "requestRate": 0.1, "lastRequestTime": 1712345670.2,
                      "requests": 40, "inFlight": 0, "errors": 0}
      }
    }

A pod's sidecar (not the gateway) adds what its worker holds, from the
worker's `GET /v1/resident` (null when the worker did not answer):

      "resident": {"gpu": ["pixel-art"], "ram": [], "disk": ["ink"],   # each adapter at its highest tier
                   "counts": {"gpu": 1, "ram": 0, "disk": 1},          # exact, even when names are cut
                   "truncated": false}                                  # at most 1,000 names in all

`waiting` counts requests held by the activator for a pool with no ready
endpoint (they are also in `inFlight`); `errors` counts 5xx answers.

`/metrics` follows the Prometheus conventions (docs/metrics.md lists every
series). Its labels are bounded: `pool` and `code` by the table and HTTP,
`outcome` by the forwarder. `adapter` is client-driven in number, so only the
first `max_adapter_series` (pool, adapter) pairs this sidecar sees get a
series of their own; the rest are counted under `adapter="_other"`. A pair
keeps its series for the sidecar's life (counters never jump or vanish), and
`/v1/stats` still has every adapter for the operator.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DEFAULT_WINDOW_S = 60.0
DEFAULT_MAX_ADAPTER_SERIES = 100
OTHER_ADAPTERS = "_other"  # the adapter label of every pair past the cap
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)


class WindowCounter:
    """Count and sum of values over the last `window_s` seconds, in 1-second buckets."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = window_s
        self._buckets: collections.deque[list[float]] = collections.deque()  # [second, count, sum]

    def add(self, now: float, value: float = 0.0) -> None:
        second = float(int(now))
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += 1
            self._buckets[-1][2] += value
        else:
            self._buckets.append([second, 1.0, value])
        self._evict(now)

    def totals(self, now: float) -> tuple[int, float]:
        self._evict(now)
        return int(sum(b[1] for b in self._buckets)), sum(b[2] for b in self._buckets)

    def _evict(self, now: float) -> None:
        oldest = now - self.window_s
        while self._buckets and self._buckets[0][0] + 1 <= oldest:
            self._buckets.popleft()


@dataclass
class _PoolCounters:
    arrivals: WindowCounter
    service: WindowCounter
    latency: WindowCounter
    requests: int = 0
    errors: int = 0
    served: int = 0
    in_flight: int = 0
    waiting: int = 0
    service_total: float = 0.0
    service_count: int = 0
    last_request: float | None = None


@dataclass
class _AdapterCounters:
    pool: str
    arrivals: WindowCounter
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    last_request: float | None = None


@dataclass
class _Table:
    loaded: bool = False
    generation: int | None = None
    last_reload: float | None = None
    errors: int = 0
    adapters: int = 0
    reload_s: float | None = None


@dataclass
class RouterStats:
    """Counters of one sidecar. Call from the event loop thread only (no locking)."""

    pod: str | None = None
    mode: str = "pod"
    window_s: float = DEFAULT_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    max_adapter_series: int = DEFAULT_MAX_ADAPTER_SERIES

    def __post_init__(self) -> None:
        self._started = self.clock()
        self._pools: dict[str, _PoolCounters] = {}
        self._adapters: dict[str, _AdapterCounters] = {}
        self._rejected = 0
        self._table = _Table()
        self._adapter_series: set[tuple[str, str]] = set()
        r = self.registry
        self.m_requests = Counter(
            "loraplex_router_requests_total", "Client requests by pool and status code", ["pool", "code"], registry=r
        )
        self.m_adapter_requests = Counter(
            "loraplex_router_adapter_requests_total",
            "Client requests by adapter (the first max_adapter_series pairs; the rest as adapter=_other)",
            ["pool", "adapter"],
            registry=r,
        )
        self.m_rejected = Counter(
            "loraplex_router_rejected_requests_total", "Requests refused before a pool was known", ["code"], registry=r
        )
        self.m_latency = Histogram(
            "loraplex_router_request_duration_seconds",
            "End-to-end time at this sidecar",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.m_service = Histogram(
            "loraplex_router_service_seconds",
            "Worker busy time per request",
            ["pool"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.m_overhead = Histogram(
            "loraplex_router_overhead_seconds",
            "Time added by the router (total minus upstream)",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.m_in_flight = Gauge("loraplex_router_in_flight_requests", "Requests in flight", ["pool"], registry=r)
        self.m_waiting = Gauge(
            "loraplex_router_waiting_requests", "Requests held for a pool with no ready endpoint", ["pool"], registry=r
        )
        self.m_served = Counter(
            "loraplex_router_peer_requests_total",
            "Requests forwarded here by a peer and served locally",
            ["pool"],
            registry=r,
        )
        self.m_own_fallback = Counter(
            "loraplex_router_served_without_table_endpoint_total",
            "Requests served by this pod's own worker while the table named no ready endpoint for its pool",
            ["pool"],
            registry=r,
        )
        self.m_attempts = Counter(
            "loraplex_router_upstream_attempts_total", "Upstream attempts by outcome", ["pool", "outcome"], registry=r
        )
        self.m_table_generation = Gauge(
            "loraplex_router_table_generation", "Generation of the routing table", registry=r
        )
        self.m_ready = Gauge(
            "loraplex_router_ready",
            "1 when this sidecar is ready: table loaded and, in a pod, its worker ready",
            registry=r,
        )
        self.m_worker_metrics_up = Gauge(
            "loraplex_router_worker_metrics_up",
            "1 when the worker's metrics were read and appended to this scrape (pod mode)",
            registry=r,
        )
        self.m_table_errors = Counter(
            "loraplex_router_table_reload_errors_total", "Routing table updates rejected as malformed", registry=r
        )

    # -- recording -------------------------------------------------------

    def _pool(self, pool: str) -> _PoolCounters:
        pc = self._pools.get(pool)
        if pc is None:
            pc = self._pools[pool] = _PoolCounters(
                WindowCounter(self.window_s), WindowCounter(self.window_s), WindowCounter(self.window_s)
            )
            # The pool's gauges exist from its first request on, at 0: a dashboard shows 0, not "no data".
            self.m_in_flight.labels(pool)
            self.m_waiting.labels(pool)
        return pc

    def _adapter(self, pool: str, adapter: str) -> _AdapterCounters:
        ac = self._adapters.get(adapter)
        if ac is None or ac.pool != pool:
            ac = self._adapters[adapter] = _AdapterCounters(pool, WindowCounter(self.window_s))
        return ac

    def _adapter_label(self, pool: str, name: str) -> str:
        """`name`, or OTHER_ADAPTERS once max_adapter_series other pairs have a series."""
        key = (pool, name)
        if key in self._adapter_series:
            return name
        if len(self._adapter_series) < self.max_adapter_series:
            self._adapter_series.add(key)
            return name
        return OTHER_ADAPTERS

    def request_started(self, pool: str, adapters: Iterable[str] = ()) -> None:
        """A client request for `pool` (and these canonical adapters) arrived here."""
        now, wall = self.clock(), self.wall()
        pc = self._pool(pool)
        pc.requests += 1
        pc.in_flight += 1
        pc.last_request = wall
        pc.arrivals.add(now)
        self.m_in_flight.labels(pool).inc()
        for name in adapters:
            ac = self._adapter(pool, name)
            ac.requests += 1
            ac.in_flight += 1
            ac.last_request = wall
            ac.arrivals.add(now)
            self.m_adapter_requests.labels(pool, self._adapter_label(pool, name)).inc()

    def request_finished(
        self,
        pool: str,
        adapters: Iterable[str],
        status: int,
        latency_s: float,
        service_s: float | None = None,
        overhead_s: float | None = None,
    ) -> None:
        """The request started with `request_started` got its answer."""
        now = self.clock()
        pc = self._pool(pool)
        pc.in_flight = max(0, pc.in_flight - 1)
        pc.latency.add(now, latency_s)
        error = status >= 500
        pc.errors += error
        if service_s is not None:
            pc.service.add(now, service_s)
            pc.service_total += service_s
            pc.service_count += 1
            self.m_service.labels(pool).observe(service_s)
        self.m_in_flight.labels(pool).dec()
        self.m_requests.labels(pool, str(status)).inc()
        self.m_latency.labels(pool).observe(latency_s)
        if overhead_s is not None:
            self.m_overhead.observe(max(0.0, overhead_s))
        for name in adapters:
            ac = self._adapter(pool, name)
            ac.in_flight = max(0, ac.in_flight - 1)
            ac.errors += error

    def waiting(self, pool: str, delta: int) -> None:
        """The activator started (+1) or stopped (-1) holding a request for `pool`."""
        pc = self._pool(pool)
        pc.waiting = max(0, pc.waiting + delta)
        self.m_waiting.labels(pool).set(pc.waiting)

    def served(self, pool: str) -> None:
        """A peer's request (with X-Loraplex-Hop) was handed to the local worker."""
        self._pool(pool).served += 1
        self.m_served.labels(pool).inc()

    def served_without_table_endpoint(self, pool: str) -> None:
        """The table named no ready endpoint for `pool`; this pod's own worker took the request."""
        self.m_own_fallback.labels(pool).inc()

    def attempt(self, pool: str, outcome: str) -> None:
        """One upstream attempt: "ok", "retry_connect", "retry_status", "timeout", "failed"."""
        self.m_attempts.labels(pool, outcome).inc()

    def rejected(self, status: int) -> None:
        self._rejected += 1
        self.m_rejected.labels(str(status)).inc()

    def table_loaded(self, generation: int, adapters: int = 0, reload_s: float | None = None) -> None:
        self._table.loaded = True
        self._table.generation = generation
        self._table.adapters = adapters
        self._table.reload_s = reload_s
        self._table.last_reload = self.wall()
        self.m_table_generation.set(generation)

    def table_error(self) -> None:
        self._table.errors += 1
        self.m_table_errors.inc()

    # -- reading ---------------------------------------------------------

    def mean_service_seconds(self, pool: str) -> float | None:
        """The pool's mean service time over the window, else over this sidecar's life; None before any."""
        pc = self._pools.get(pool)
        if pc is None:
            return None
        sn, ssum = pc.service.totals(self.clock())
        if sn:
            return ssum / sn
        return pc.service_total / pc.service_count if pc.service_count else None

    def snapshot(self) -> dict[str, Any]:
        """The `/v1/stats` document (shape in the module docstring)."""
        now = self.clock()
        uptime = now - self._started
        # Divide by the part of the window this process has lived through.
        span = max(1.0, min(self.window_s, uptime))
        pools = {}
        for name, pc in sorted(self._pools.items()):
            n, _ = pc.arrivals.totals(now)
            sn, ssum = pc.service.totals(now)
            ln, lsum = pc.latency.totals(now)
            # In an idle window the lifetime mean is the best estimate of the next service time.
            lifetime = pc.service_total / pc.service_count if pc.service_count else 0.0
            mean_service = ssum / sn if sn else lifetime
            pools[name] = {
                "requestRate": n / span,
                "meanServiceSeconds": mean_service,
                "meanLatencySeconds": lsum / ln if ln else 0.0,
                "inFlight": pc.in_flight,
                "waiting": pc.waiting,
                "requests": pc.requests,
                "errors": pc.errors,
                "served": pc.served,
                "lastRequestTime": pc.last_request,
            }
        adapters = {}
        for name, ac in sorted(self._adapters.items()):
            n, _ = ac.arrivals.totals(now)
            adapters[name] = {
                "pool": ac.pool,
                "requestRate": n / span,
                "lastRequestTime": ac.last_request,
                "requests": ac.requests,
                "inFlight": ac.in_flight,
                "errors": ac.errors,
            }
        return {
            "pod": self.pod,
            "mode": self.mode,
            "time": self.wall(),
            "uptimeSeconds": uptime,
            "windowSeconds": self.window_s,
            "rejected": self._rejected,
            "table": {
                "loaded": self._table.loaded,
                "generation": self._table.generation,
                "lastReloadTime": self._table.last_reload,
                "reloadErrors": self._table.errors,
                "adapters": self._table.adapters,
                "lastReloadSeconds": self._table.reload_s,
            },
            "pools": pools,
            "adapters": adapters,
        }
