"""The chart's Prometheus rules and Grafana dashboard, read for the tests.

Both are plain files in charts/loraplex/files/ (the chart loads them with
.Files.Get), so the tests check the bytes that get installed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

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
