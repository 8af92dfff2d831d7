"""The operator's Prometheus metrics: GET /metrics on its health port.

Read from the operator's own state at scrape time (a custom collector), so
nothing is updated on the hot path and a scrape always sees the current
figures: each tracked pool's replicas against its bounds (the signal behind
the LoraplexPoolAtMaxReplicas alert: a saturated pool the autoscaler can grow
no further), the routing-table writer's flushes and writes, adapter events and
the adapter reconcile queue, the apiserver requests made by our client, the
autoscaler's polls, and whether this replica leads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from loraplex_operator.controllers.app import Operator

POOL_LABELS = ["namespace", "pool"]


class OperatorCollector(Collector):
    def __init__(self, op: Operator) -> None:
        self.op = op

    def collect(self) -> Iterator[Metric]:
        op = self.op
        leader = GaugeMetricFamily("loraplex_operator_leader", "1 while this replica holds the leader lease.")
        leader.add_metric([], 1.0 if op.elector is None or op.elector.is_leader else 0.0)
        yield leader

        replicas = GaugeMetricFamily(
            "loraplex_operator_pool_replicas",
            "Replicas the pool is set to (spec.replicas, as the autoscaler sets it).",
            labels=POOL_LABELS,
        )
        min_r = GaugeMetricFamily(
            "loraplex_operator_pool_min_replicas", "The pool's spec.minReplicas.", labels=POOL_LABELS
        )
        max_r = GaugeMetricFamily(
            "loraplex_operator_pool_max_replicas", "The pool's spec.maxReplicas.", labels=POOL_LABELS
        )
        auto = GaugeMetricFamily(
            "loraplex_operator_pool_autoscaling_enabled", "1 when the autoscaler sizes the pool.", labels=POOL_LABELS
        )
        for (ns, name), spec, count in op.autoscaler.pool_sizes():
            labels = [ns, name]
            replicas.add_metric(labels, count)
            min_r.add_metric(labels, spec.min_replicas)
            max_r.add_metric(labels, spec.max_replicas)
            auto.add_metric(labels, 1.0 if spec.autoscaling.enabled else 0.0)
        yield from (replicas, min_r, max_r, auto)

        stats = op.writer.stats
        flushes = CounterMetricFamily(
            "loraplex_operator_table_flushes", "Routing-table flushes (a rebuild and compare)."
        )
        flushes.add_metric([], stats.flushes)
        writes = CounterMetricFamily(
            "loraplex_operator_table_writes", "Routing-table ConfigMap writes, by namespace.", labels=["namespace"]
        )
        for ns, n in sorted(stats.by_namespace.items()):
            writes.add_metric([ns], n)
        errors = CounterMetricFamily("loraplex_operator_table_errors", "Routing-table flushes that failed (retried).")
        errors.add_metric([], stats.errors)
        yield from (flushes, writes, errors)

        events = CounterMetricFamily("loraplex_operator_adapter_events", "LoraAdapter watch events handled.")
        events.add_metric([], op.adapter_events)
        known = GaugeMetricFamily(
            "loraplex_operator_objects", "Objects in the operator's own view, by kind.", labels=["kind"]
        )
        known.add_metric(["LoraAdapter"], len(op.adapter_store))
        known.add_metric(["BaseModelPool"], len(op.pool_store))
        lists = CounterMetricFamily(
            "loraplex_operator_lists",
            "Full LISTs of a kind by the operator's reflectors (one at start; more means a watch expired).",
            labels=["kind"],
        )
        lists.add_metric(["LoraAdapter"], op.adapter_reflector.lists)
        lists.add_metric(["BaseModelPool"], op.pool_reflector.lists)
        yield from (events, known, lists)
        q = op.adapter_queue.stats()
        queue = GaugeMetricFamily(
            "loraplex_operator_adapter_queue_adapters",
            "Adapters in the reconcile queue: queued, being reconciled (active), or waiting for a retry.",
            labels=["state"],
        )
        for state in ("queued", "active", "waiting"):
            queue.add_metric([state], q[state])
        reconciles = CounterMetricFamily("loraplex_operator_adapter_reconciles", "LoraAdapter reconciles run.")
        reconciles.add_metric([], q["reconciles"])
        retries = CounterMetricFamily(
            "loraplex_operator_adapter_retries", "LoraAdapter reconciles that ended short of Ready (retried later)."
        )
        retries.add_metric([], q["retries"])
        yield from (queue, reconciles, retries)

        requests = CounterMetricFamily(
            "loraplex_operator_api_requests", "Kubernetes API requests made by the operator's client.", labels=["verb"]
        )
        for verb, n in sorted(op.kube.requests_by_verb.items()):
            requests.add_metric([verb], n)
        yield requests

        polls = CounterMetricFamily(
            "loraplex_operator_autoscaler_polls", "Pool stats polls by the autoscaler, by result.", labels=["result"]
        )
        polls.add_metric(["ok"], op.autoscaler.polls - op.autoscaler.failed_polls)
        polls.add_metric(["failed"], op.autoscaler.failed_polls)
        yield polls


def metrics_registry(op: Operator) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OperatorCollector(op))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)
