"""The chart's alert rules and dashboard: valid for promtool, each alert unit-tested, names real.

The names check compares every loraplex_* metric a rule or a panel uses with
what the worker's, the sidecar's and the operator's registries export, so a renamed metric
fails here, not on a platform team's Grafana. That the queries return data
from a live stack is tests/process/test_prometheus.py.
"""

from __future__ import annotations

import subprocess

from kubernetes import client
from prometheus_client import CollectorRegistry, generate_latest

from inference_pod.router.stats import RouterStats
from inference_pod.worker.metrics import WorkerMetrics
from loraplex_operator.clients.kube import Kube
from loraplex_operator.controllers.app import Operator, OperatorConfig
from loraplex_operator.controllers.metrics import metrics_registry
from loraplex_operator.logic.specs import parse_pool_spec
from tests.helpers import monitoring as mon

SEVERITIES = {"warning", "critical"}


def operator_registry() -> CollectorRegistry:
    """The operator's registry, with one pool tracked so its per-pool families have samples."""
    op = Operator(OperatorConfig(leader_election=False), kube=Kube(client.Configuration()))
    op.kube.close()
    op.autoscaler.track("ml", "tiny", parse_pool_spec({"model": {"name": "tiny"}}), 1)
    op.kube.requests_by_verb["GET"] += 1
    return metrics_registry(op)


def exported_names() -> set[str]:
    """Every sample name the worker, the sidecar and the operator can export (histograms with _bucket/_sum/_count)."""
    names = set()
    for registry in (WorkerMetrics().registry, RouterStats().registry, operator_registry()):
        for family in registry.collect():
            if family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
            elif family.type == "counter":
                names |= {family.name + "_total", family.name + "_created"}
            else:
                names.add(family.name)
    return names


def test_exported_names_follow_the_conventions() -> None:
    registries = (WorkerMetrics().registry, RouterStats().registry, operator_registry())
    text = "".join(generate_latest(r).decode() for r in registries)
    families = [ln.split()[2:4] for ln in text.splitlines() if ln.startswith("# TYPE ")]
    assert any(name.startswith("loraplex_operator_") for name, _ in families)
    for name, kind in families:
        assert name.startswith(("loraplex_worker_", "loraplex_router_", "loraplex_operator_")), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), f"{name}: histograms here are durations, in seconds"
        assert not any(unit in name for unit in ("_ms", "_milliseconds", "_mb", "_kb")), name


def test_promtool_check_rules() -> None:
    out = subprocess.run(
        [mon.promtool(), "check", "rules", str(mon.RULES_FILE)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(mon.recording_rules()) + len(mon.alert_rules())} rules found" in out.stdout


def test_promtool_unit_tests_of_every_alert() -> None:
    out = subprocess.run(
        [mon.promtool(), "test", "rules", mon.RULES_TEST_FILE.name],
        cwd=mon.RULES_TEST_FILE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    import yaml

    cases = yaml.safe_load(mon.RULES_TEST_FILE.read_text())["tests"]
    checks = [c for t in cases for c in t.get("alert_rule_test", [])]
    for alert in mon.alert_rules():
        mine = [c for c in checks if c["alertname"] == alert["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{alert['alert']}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{alert['alert']}: no case where it stays quiet"


def test_alerts_have_for_severity_and_runbook_text() -> None:
    alerts = mon.alert_rules()
    wanted = {
        "LoraplexRequestsFailing",
        "LoraplexQueueFull",
        "LoraplexPoolSaturated",
        "LoraplexPoolAtMaxReplicas",
        "LoraplexAdaptersFromSource",
        "LoraplexPodNotReady",
    }
    assert {a["alert"] for a in alerts} == wanted
    records = {r["record"] for r in mon.recording_rules()}
    for a in alerts:
        assert a.get("for"), f"{a['alert']}: no `for:` (one bad scrape would page)"
        assert a["labels"]["severity"] in SEVERITIES, a["alert"]
        for key in ("summary", "description", "runbook"):
            assert len(a["annotations"].get(key, "")) > 20, f"{a['alert']}: annotation {key} missing or empty"
        m = mon.ALERT_EXPR.match(a["expr"].strip())
        assert m, f"{a['alert']}: expr is not `<recording rule> <op> <number>`: {a['expr']!r}"
        assert m["signal"] in records, f"{a['alert']}: {m['signal']} is not a recording rule here"


def test_rules_and_panels_use_only_exported_metrics() -> None:
    exported = exported_names()
    used = [(r["record"], r["expr"]) for r in mon.recording_rules()]
    used += [(q.where, q.expr) for q in mon.dashboard_queries()]
    assert len(used) > 10
    for where, expr in used:
        names = mon.metric_names(expr)
        assert names or any(r["record"] in expr for r in mon.recording_rules()), f"{where}: uses no loraplex metric"
        unknown = names - exported
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by the worker, the sidecar or the operator"


def test_dashboard_panels_are_per_pool_and_cover_the_topics() -> None:
    dash = mon.dashboard()
    assert dash["uid"] and dash["title"]
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "namespace", "pool"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    text = " ".join(q.expr for q in mon.dashboard_queries(substitute=False))
    for needle in (
        "loraplex_router_requests_total",
        "histogram_quantile(0.95",
        "loraplex_worker_queue_depth",
        "loraplex_worker_ready",
        "loraplex_worker_adapter_lookups_total",
        "topk(10, sum by (pool, adapter)",
    ):
        assert needle in text, needle
    for q in mon.dashboard_queries(substitute=False):
        assert 'pool=~"$pool"' in q.expr and 'namespace=~"$namespace"' in q.expr, q.where
