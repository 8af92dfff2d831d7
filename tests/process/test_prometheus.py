"""A real Prometheus scrapes a real worker + sidecar; every dashboard and alert query answers.

Debian's `prometheus` binary runs on loopback with a temporary data directory,
scraping the sidecar's /metrics (which carries its worker's) every second
with the labels the chart's PodMonitor gives a pool pod (namespace, pod, pool,
honor_labels), and loading the chart's rule file as it is. After traffic
(the base model, a path adapter, a URL adapter fetched from a loopback HTTP
server, two adapters at once, a bad request) the test asks Prometheus'
HTTP API for:
- every dashboard panel query (variables set to "All"): no error, not empty;
- every recording rule, by name and by its expression: not empty (but the
  ones on the operator's metrics: no operator runs here; the cluster tier's
  tests/cluster/test_operator_prometheus.py evaluates those). Every
  alert is `<recording rule> <op> <number>` (tests/unit/monitoring checks
  that form), so its series exist exactly when its recording rule answers;
  the alert's full expression must evaluate without error (it is empty
  while healthy: the thresholds are not crossed);
- /api/v1/rules: every rule evaluated with health "ok".
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from loraplex.api.hopauth import write_random_key_file
from tests.helpers import monitoring as mon
from tests.helpers.file_server import FileServer
from tests.helpers.httpclient import post
from tests.helpers.procs import PYTHON, REPO_ROOT, ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready

pytestmark = pytest.mark.slow

MAKE_ADAPTERS = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import build_tiny_pipeline
unet = build_tiny_pipeline().unet
for i, name in enumerate(sys.argv[2:]):
    write_lora(Path(sys.argv[1]) / f"{name}.safetensors", unet, rank=4, seed=300 + i)
"""
TARGET_LABELS = {"namespace": "local", "pod": "pod-0", "pool": "tiny"}


@dataclass
class Stack:
    sidecar: ProcHandle
    prometheus: ProcHandle

    def query(self, expr: str) -> list[dict[str, Any]]:
        return mon.query(self.prometheus.url, expr)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    mon.prometheus()  # fails at once when missing
    tmp = tmp_path_factory.mktemp("prom")
    adapters = tmp / "adapters"
    handles: list[ProcHandle] = []
    key = str(write_random_key_file(tmp / "hop-key"))
    with FileServer(adapters) as files:
        try:
            wport, sport, pport = free_port(), free_port(), free_port()
            worker_cmd = [
                *loopback_server_cmd("inference_pod.worker", wport),
                "--model",
                "tiny",
                "--torch-threads",
                "1",
                "--disk-cache-dir",
                str(tmp / "cache"),
                "--adapter-path-root",
                str(adapters),
                "--allow-private-sources",
                "--hop-key-file",
                key,
            ]
            worker = start_process(worker_cmd, wport, ready_path=None, log_dir=tmp)
            handles.append(worker)
            subprocess.run([PYTHON, "-c", MAKE_ADAPTERS, str(adapters), "near", "far"], check=True, cwd=REPO_ROOT)
            table = {
                "version": 1,
                "generation": 1,
                "pools": {
                    "tiny": {
                        "baseModel": "tiny",
                        "endpoints": [{"name": "pod-0", "url": f"http://127.0.0.1:{sport}"}],
                    }
                },
                "adapters": {
                    "near": {"pool": "tiny", "source": {"type": "path", "path": str(adapters / "near.safetensors")}},
                    "far": {"pool": "tiny", "source": {"type": "url", "url": files.url + "/far.safetensors"}},
                },
            }
            (tmp / "table.json").write_text(json.dumps(table))
            wait_ready(worker, timeout=240)
            sidecar_cmd = [
                *loopback_server_cmd("inference_pod.router", sport),
                "--worker-url",
                worker.url,
                "--pod-name",
                "pod-0",
                "--table-file",
                str(tmp / "table.json"),
                "--hop-key-file",
                key,
            ]
            sidecar = start_process(sidecar_cmd, sport, timeout=60, log_dir=tmp)
            handles.append(sidecar)
            config = mon.prometheus_config(tmp, f"127.0.0.1:{sport}", TARGET_LABELS)
            prom_cmd = mon.prometheus_cmd(tmp, config, pport)
            prom = start_process(prom_cmd, pport, ready_path="/-/ready", timeout=60, log_dir=tmp)
            handles.append(prom)
            yield Stack(sidecar, prom)
        finally:
            for h in reversed(handles):
                h.terminate()


def drive_traffic(url: str) -> None:
    body = {"prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64, "seed": 1}
    for model in ("tiny", "near", "far", "near", "far"):
        r = post(url + "/v1/generate", {**body, "model": model}, timeout=120)
        assert r.status == 200, r.body[:300]
    r = post(url + "/v1/generate", {**body, "model": "tiny", "adapters": ["near", "far"]}, timeout=120)
    assert r.status == 200, r.body[:300]
    assert post(url + "/v1/generate", {**body, "model": "tiny", "steps": -1}, timeout=30).status == 400


def wait_for(stack: Stack, expr: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not stack.query(expr):
        assert time.monotonic() < deadline, f"{expr!r} still empty after {timeout:.0f}s"
        time.sleep(0.5)


def test_every_dashboard_and_alert_query_answers(stack: Stack) -> None:
    wait_for(stack, 'up{job="loraplex"} == 1')
    drive_traffic(stack.sidecar.url)
    # Two scrapes after the traffic, and a rule evaluation after them.
    scraped = time.time()
    wait_for(stack, f"timestamp(loraplex_worker_ready) > {scraped + 1.5}")
    # A rate needs an increase between two scrapes that both saw the series; scrapes during the traffic can time out
    # on a busy machine (the sidecar waits for its worker's part), so one more request after a scrape that saw it.
    body = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "model": "tiny"}
    r = post(stack.sidecar.url + "/v1/generate", body)
    assert r.status == 200, r.body[:300]
    scraped = time.time()
    wait_for(stack, f"timestamp(loraplex_worker_ready) > {scraped + 1.5}")
    wait_for(stack, "loraplex:pool_requests:rate5m > 0")
    time.sleep(1.5)

    empty = []
    for q in mon.dashboard_queries():
        if not stack.query(q.expr):
            empty.append(f"{q.where}: {q.expr}")
    from_operator = mon.operator_records()  # no operator here: tests/cluster/test_operator_prometheus.py
    assert from_operator, "the rules file has no rule on the operator's metrics: update this test"
    for rule in mon.recording_rules():
        if rule["record"] in from_operator:
            continue
        if not stack.query(rule["record"]):
            empty.append(f"record {rule['record']} (by name)")
        if not stack.query(rule["expr"]):
            empty.append(f"record {rule['record']}: {rule['expr']}")
    assert not empty, "queries that returned nothing:\n" + "\n".join(empty)
    for alert in mon.alert_rules():
        stack.query(alert["expr"])  # evaluates (raises on an error); healthy, so no threshold is crossed
        assert not stack.query(f'ALERTS{{alertname="{alert["alert"]}",alertstate="firing"}}'), alert["alert"]

    evaluated = mon.rule_health(stack.prometheus.url)
    names = {r["record"] for r in mon.recording_rules()} | {a["alert"] for a in mon.alert_rules()}
    assert set(evaluated) == names
    bad = {n: r.get("lastError") for n, r in evaluated.items() if r["health"] != "ok"}
    assert not bad, bad

    assert stack.query("loraplex_router_worker_metrics_up == 1") and stack.query("loraplex_router_ready == 1")
    # The labels a dashboard groups by are there: the router's pool, the worker's from the target.
    assert {s["metric"].get("pool") for s in stack.query("loraplex_worker_ready")} == {"tiny"}
    tiers = {s["metric"]["tier"] for s in stack.query("loraplex_worker_adapter_lookups_total")}
    assert {"source", "gpu"} <= tiers, tiers
