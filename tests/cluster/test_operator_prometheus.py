"""The operator's /metrics on the real control plane, and a real Prometheus evaluating the chart's rules on it.

Two pools: `full` set to its maxReplicas, `room` below it. The operator's /metrics (its health port) shows each
pool's replicas against its bounds; Prometheus (Debian's package, on loopback) scrapes it with the chart's
PodMonitor settings and the chart's rule file, and `loraplex:pool_at_max_replicas`, the signal of the
LoraplexPoolAtMaxReplicas alert, is 1 for `full` and 0 for `room`. Scaling `room` up to its maximum flips it.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import OperatorProcess, pool_manifest, wait_until
from tests.helpers import monitoring as mon
from tests.helpers.procs import free_port, http_get, start_process

NO_AUTOSCALING = {"enabled": False}


def pool_series(operator: OperatorProcess, namespace: str) -> dict[tuple[str, str], float]:
    """(metric, pool) -> value of the operator's loraplex_operator_pool_* samples for `namespace`."""
    assert operator.handle is not None
    status, body = http_get(operator.handle.url + "/metrics")
    assert status == 200
    return {
        (s.name, s.labels["pool"]): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
        if s.name.startswith("loraplex_operator_pool_") and s.labels.get("namespace") == namespace
    }


def test_pool_bounds_in_metrics_and_the_at_max_rule(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    kube.create(pool_manifest("full", namespace, replicas=1, maxReplicas=1, autoscaling=NO_AUTOSCALING))
    kube.create(pool_manifest("room", namespace, replicas=0, maxReplicas=2, autoscaling=NO_AUTOSCALING))
    series = wait_until(
        "both pools in the operator's metrics",
        lambda: (s := pool_series(operator, namespace)) and {p for _, p in s} == {"full", "room"} and s,
        timeout=60,
    )
    assert series["loraplex_operator_pool_replicas", "full"] == 1
    assert series["loraplex_operator_pool_max_replicas", "full"] == 1
    assert series["loraplex_operator_pool_replicas", "room"] == 0
    assert series["loraplex_operator_pool_max_replicas", "room"] == 2
    assert series["loraplex_operator_pool_autoscaling_enabled", "room"] == 0

    assert operator.handle is not None
    target = operator.handle.url.removeprefix("http://")
    port = free_port()
    config = mon.prometheus_config(tmp_path, target, {"namespace": "loraplex-system", "pod": "loraplex-operator-0"})
    prom = start_process(
        mon.prometheus_cmd(tmp_path, config, port), port, ready_path="/-/ready", timeout=60, log_dir=tmp_path
    )
    try:

        def at_max() -> dict[str, float]:
            rows = mon.query(prom.url, f'loraplex:pool_at_max_replicas{{namespace="{namespace}"}}')
            return {r["metric"]["pool"]: float(r["value"][1]) for r in rows}

        # honor_labels: the pools' own namespace, not the operator pod's, labels the rule's answer.
        wait_until("the at-max rule for both pools", lambda: len(at_max()) == 2, timeout=60)
        assert at_max() == {"full": 1.0, "room": 0.0}

        kube.merge_patch(c.API_VERSION, c.POOL_PLURAL, namespace, "room", {"spec": {"replicas": 2}})
        wait_until("room at its maximum", lambda: at_max() == {"full": 1.0, "room": 1.0}, timeout=60)

        health = mon.rule_health(prom.url)
        for name in mon.operator_records() | {"LoraplexPoolAtMaxReplicas"}:
            assert health[name]["health"] == "ok", (name, health[name].get("lastError"))
    finally:
        prom.terminate()
