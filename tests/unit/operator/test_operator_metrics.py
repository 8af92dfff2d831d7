"""The operator's /metrics: what a scrape reads from its state (no apiserver needed; the HTTP side and a real
Prometheus evaluating the rules on it are tests/cluster/test_operator_prometheus.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from loraplex_operator.clients.kube import Kube
from loraplex_operator.controllers.app import Operator, OperatorConfig
from loraplex_operator.controllers.metrics import exposition, metrics_registry
from loraplex_operator.logic.specs import parse_pool_spec


@pytest.fixture
def op() -> Iterator[Operator]:
    operator = Operator(OperatorConfig(leader_election=False), kube=Kube(client.Configuration()))
    try:
        yield operator
    finally:
        operator.kube.close()


def samples(op: Operator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(metrics_registry(op)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_pools_replicas_against_their_bounds(op: Operator) -> None:
    assert not [k for k in samples(op) if k[0].startswith("loraplex_operator_pool_")]
    spec = {"model": {"name": "tiny"}, "minReplicas": 1, "maxReplicas": 3, "autoscaling": {"enabled": True}}
    op.autoscaler.track("ml", "sdxl", parse_pool_spec(spec), 3)
    op.autoscaler.track("ml", "tiny", parse_pool_spec({"model": {"name": "tiny"}, "maxReplicas": 5}), 2)
    s = samples(op)
    sdxl, tiny = (("namespace", "ml"), ("pool", "sdxl")), (("namespace", "ml"), ("pool", "tiny"))
    assert s["loraplex_operator_pool_replicas", sdxl] == 3 and s["loraplex_operator_pool_max_replicas", sdxl] == 3
    assert s["loraplex_operator_pool_min_replicas", sdxl] == 1
    assert s["loraplex_operator_pool_autoscaling_enabled", sdxl] == 1
    assert s["loraplex_operator_pool_replicas", tiny] == 2 and s["loraplex_operator_pool_max_replicas", tiny] == 5
    # The autoscaler scales, a scrape sees it; a deleted pool's series go.
    op.autoscaler.track("ml", "tiny", parse_pool_spec({"model": {"name": "tiny"}, "maxReplicas": 5}), 5)
    assert samples(op)["loraplex_operator_pool_replicas", tiny] == 5
    op.autoscaler.forget("ml", "sdxl")
    assert ("loraplex_operator_pool_replicas", sdxl) not in samples(op)


def test_counters_follow_the_operator(op: Operator) -> None:
    s = samples(op)
    assert s["loraplex_operator_leader", ()] == 1  # no election: it runs as the leader
    assert s["loraplex_operator_table_flushes_total", ()] == 0
    op.writer.stats.flushes += 4
    op.writer.stats.by_namespace["ml"] += 2
    op.adapter_events += 7
    op.kube.requests_by_verb["PATCH"] += 3
    op.autoscaler.polls, op.autoscaler.failed_polls = 10, 1
    s = samples(op)
    assert s["loraplex_operator_table_flushes_total", ()] == 4
    assert s["loraplex_operator_table_writes_total", (("namespace", "ml"),)] == 2
    assert s["loraplex_operator_adapter_events_total", ()] == 7
    assert s["loraplex_operator_api_requests_total", (("verb", "PATCH"),)] == 3
    assert s["loraplex_operator_autoscaler_polls_total", (("result", "ok"),)] == 9
    assert s["loraplex_operator_autoscaler_polls_total", (("result", "failed"),)] == 1
    assert s["loraplex_operator_adapter_queue_adapters", (("state", "queued"),)] == 0
    op.adapter_queue.observe("ADDED", {"metadata": {"namespace": "ml", "name": "a", "generation": 1}})
    s = samples(op)
    assert s["loraplex_operator_adapter_queue_adapters", (("state", "queued"),)] == 1
    assert s["loraplex_operator_adapter_reconciles_total", ()] == 0


def test_objects_known_follow_the_reflectors_events(op: Operator) -> None:
    def adapter(name: str) -> dict:
        return {"metadata": {"namespace": "ml", "name": name, "generation": 1}, "spec": {}}

    for name in ("a", "b"):
        op._adapter_event(None, adapter(name))  # listed
    op._pool_event(None, {"metadata": {"namespace": "ml", "name": "sdxl"}, "spec": {"model": {"name": "sdxl"}}})
    s = samples(op)
    assert s["loraplex_operator_objects", (("kind", "LoraAdapter"),)] == 2
    assert s["loraplex_operator_objects", (("kind", "BaseModelPool"),)] == 1
    assert s["loraplex_operator_adapter_events_total", ()] == 2
    op._adapter_event("DELETED", adapter("a"))
    assert samples(op)["loraplex_operator_objects", (("kind", "LoraAdapter"),)] == 1
    assert samples(op)["loraplex_operator_lists_total", (("kind", "LoraAdapter"),)] == 0
