"""The chart's Prometheus rules and Grafana dashboard, read for the tests.

Both are plain files in charts/loraplex/files/ (the chart loads them with
.Files.Get), so the tests check the bytes that get installed.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.httpclient import get

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "charts" / "loraplex" / "files" / "prometheus-rules.yaml"
DASHBOARD_FILE = ROOT / "charts" / "loraplex" / "files" / "grafana-dashboard.json"
RULES_TEST_FILE = ROOT / "tests" / "unit" / "monitoring" / "rules-test.yaml"

# An alert is `<recording rule> <comparison> <number>` (the rules file says why).
ALERT_EXPR = re.compile(r"^(?P<signal>[a-z][a-z0-9_:]*)\s*(?P<op>[<>]=?|==|!=)\s*(?P<threshold>[0-9.]+)$")
# What Grafana substitutes before a query reaches Prometheus: "All" for the variables.
DASHBOARD_VARIABLES = {"$namespace": ".*", "$pool": ".*", "$__rate_interval": "5m"}
# Metric names in PromQL: a word with the loraplex_ prefix (recording rules have colons and are left out).
METRIC = re.compile(r"\bloraplex_[a-z0-9_]+")


@dataclass(frozen=True)
class Query:
    where: str  # e.g. "panel 'Requests per second' A" or "record loraplex:pool_requests:rate5m"
    expr: str


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return groups


def recording_rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "record" in r]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return doc


def dashboard_queries(substitute: bool = True) -> list[Query]:
    """Every panel target's expression, with the dashboard variables set to "All" when `substitute`."""
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if substitute:
                for var, value in DASHBOARD_VARIABLES.items():
                    expr = expr.replace(var, value)
            out.append(Query(f"panel {panel['title']!r} {target['refId']}", expr))
    return out


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def operator_records() -> set[str]:
    """Recording rules fed by the operator's metrics (loraplex_operator_*), directly or through another such rule.

    The process tier has no operator: these answer only in the cluster tier (tests/cluster/test_operator_prometheus.py).
    """
    found: set[str] = set()
    for rule in recording_rules():  # a rule may use only the rules above it
        expr = rule["expr"]
        if any(n.startswith("loraplex_operator_") for n in metric_names(expr)) or any(r in expr for r in found):
            found.add(rule["record"])
    return found


def promtool() -> str:
    """The promtool binary; a failure (not a skip) when missing: ./dev test installs it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: `./dev test` installs it (tools/k8s/host-deps.sh monitoring, as root)")
    return path


def prometheus() -> str:
    """The Prometheus server binary (Debian's `prometheus` package); a failure when missing."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "prometheus is not installed: `./dev test` installs it (tools/k8s/host-deps.sh monitoring, as root)"
        )
    return path


def prometheus_config(tmp: Path, target: str, labels: dict[str, str]) -> Path:
    """A config scraping `target` every second as the chart's monitors do (honor_labels, the target's `labels`),
    with the chart's rule file evaluated every second."""
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": "loraplex", "honor_labels": True, "static_configs": [{"targets": [target], "labels": labels}]}
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def prometheus_cmd(tmp: Path, config: Path, port: int) -> list[str]:
    """The Prometheus server on loopback, its data in `tmp`."""
    return [
        prometheus(),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector `expr` evaluates to now; raises AssertionError with Prometheus' error."""
    r = get(prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=30)
    doc = r.json()
    assert r.status == 200 and doc["status"] == "success", f"{expr!r}: {doc.get('error', r.status)}"
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def rule_health(prometheus_url: str) -> dict[str, dict[str, Any]]:
    """Every loaded rule by name (record or alert) with its evaluation state (health, lastError)."""
    groups = get(prometheus_url + "/api/v1/rules", timeout=30).json()["data"]["groups"]
    return {r["name"]: r for g in groups for r in g["rules"]}
