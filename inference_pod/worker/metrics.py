"""Prometheus metrics of the diffusion worker, on a registry of its own.

Names follow the Prometheus conventions: `loraplex_worker_` prefix, base
units in the name (`_seconds`, `_bytes`), counters end in `_total` (the
client adds it on exposition). Labels are bounded: `endpoint` (2 values),
`status` (HTTP codes the worker answers), `tier` (gpu, ram, disk, source).
No adapter names: a pod may see thousands; per-adapter traffic is the
router's `loraplex_router_adapter_requests_total`, capped there. The full
list, with the queries that use them, is docs/metrics.md.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
_SWAP_BUCKETS = (1e-5, 1e-4, 1e-3, 5e-3, 0.02, 0.1, 0.5, 2, 10)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "loraplex_worker_requests_total", "Generation requests by outcome", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "loraplex_worker_request_duration_seconds",
            "End-to-end request latency at the worker",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "loraplex_worker_queue_wait_seconds", "Time waiting for the GPU", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "loraplex_worker_inference_seconds", "Diffusion time per job", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.swap = Histogram(
            "loraplex_worker_adapter_swap_seconds",
            "Adapter activation time by source tier",
            ["tier"],
            buckets=_SWAP_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "loraplex_worker_adapter_lookups_total",
            "Adapter lookups by the tier that served them",
            ["tier"],
            registry=r,
        )
        self.queue_depth = Gauge("loraplex_worker_queue_depth", "Jobs waiting or running", registry=r)
        self.queue_capacity = Gauge(
            "loraplex_worker_queue_capacity", "Most jobs waiting or running before a 429", registry=r
        )
        self.ready = Gauge(
            "loraplex_worker_ready", "1 when the model is loaded and the GPU job is not stuck", registry=r
        )
        self.resident = Gauge("loraplex_worker_resident_adapters", "Adapters held per tier", ["tier"], registry=r)
        self.tier_bytes = Gauge("loraplex_worker_adapter_bytes", "Bytes held per tier", ["tier"], registry=r)
        self.bad_adapters = Gauge("loraplex_worker_bad_adapters", "Adapters remembered as bad", registry=r)
