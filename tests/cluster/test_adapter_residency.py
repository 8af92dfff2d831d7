"""`kubectl get lora` shows where an adapter is resident, from what the pods' sidecars report.

A kwok node whose InternalIP is a loopback address carries a hostNetwork pod
labelled for stats polling: kwok gives the pod the node's IP, so the
operator's autoscaler dials 127.x.y.z on its stats port, where this test
serves a `/v1/stats` document like a pod's sidecar (nothing leaves the
machine). The test checks that the adapter the "pod" reports shows up in
the LoraAdapter's status and printer columns, that an adapter nobody
reports gets no status write, and that the residency goes away when the pod
stops reporting it.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, KubeError
from tests.cluster.operator_support import (
    OperatorProcess,
    adapter_manifest,
    kubectl,
    pool_manifest,
    wait_until,
)


class FakeSidecar:
    """A `/v1/stats` server on one loopback address; `resident` is what it reports."""

    def __init__(self, host: str, port: int, pod: str) -> None:
        self.resident: dict[str, Any] | None = None
        self.polls = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.polls += 1
                doc = {"pod": pod, "mode": "pod", "pools": {}, "adapters": {}, "resident": owner.resident}
                body = json.dumps(doc).encode()
                self.send_response(200 if self.path == c.STATS_PATH else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def loopback_pod(kube: Kube, operator: OperatorProcess, namespace: str) -> Iterator[tuple[str, FakeSidecar]]:
    if operator.stats_port is None:
        pytest.skip("the session's operator polls the default sidecar port")
    ip = f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    node = f"loopback-{uuid.uuid4().hex[:6]}"
    pod = "resident-pod-0"
    sidecar = FakeSidecar(ip, operator.stats_port, pod)
    kube.request(
        "POST",
        "/api/v1/nodes",
        body={
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": node},
            },
            "spec": {"taints": [{"key": "loraplex.io/test-only", "value": "true", "effect": "NoSchedule"}]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "capacity": {"cpu": "4", "memory": "8Gi", "pods": "10"},
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
            },
        },
    )
    try:
        # The apiserver drops a new Node's addresses, and kwok's first status update may replace the ones we set
        # (it computed them before our patch landed): set them until kwok has taken the node with our address.
        # kwok hands a hostNetwork pod the node IPs it knows when the pod starts, so only then create the pod.
        def node_ready() -> bool:
            st = kube.get("v1", "nodes", None, node).get("status") or {}
            if ip not in [a.get("address") for a in st.get("addresses") or []]:
                addresses = {"addresses": [{"type": "InternalIP", "address": ip}]}
                kube.merge_patch("v1", "nodes", None, node, {"status": addresses}, "status")
                return False
            return any(x.get("type") == "Ready" and x.get("status") == "True" for x in st.get("conditions") or [])

        wait_until("kwok to take the loopback node (Ready, with our address)", node_ready, timeout=60)
        wait_until("the node to keep our address", node_ready, timeout=10)
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": namespace, "labels": {c.LABEL_STATS: "true"}},
                "spec": {
                    "nodeName": node,
                    "hostNetwork": True,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "sidecar", "image": "loraplex/fake-sidecar:test"}],
                },
            }
        )

        def pod_ready() -> bool:
            st = kube.get("v1", "pods", namespace, pod).get("status") or {}
            ready = any(x.get("type") == "Ready" and x.get("status") == "True" for x in st.get("conditions") or [])
            assert ready and st.get("podIP") == ip, {k: st.get(k) for k in ("phase", "podIP", "hostIP", "conditions")}
            return True

        wait_until("the hostNetwork pod ready on the loopback node's IP", pod_ready, timeout=60)
        yield pod, sidecar
    finally:
        sidecar.close()
        with contextlib.suppress(KubeError):
            kube.delete("v1", "pods", namespace, pod)
        kube.delete("v1", "nodes", None, node)


def _status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.get(c.API_VERSION, c.ADAPTER_PLURAL, namespace, name).get("status") or {}


def _columns(namespace: str, name: str) -> dict[str, str]:
    """kubectl's printer columns (-o wide), cut at the header's column offsets (cells may be blank)."""
    header, row = kubectl("-n", namespace, "get", "lora", name, "-o", "wide").stdout.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def test_kubectl_get_lora_shows_where_an_adapter_is_resident(
    kube: Kube, operator: OperatorProcess, namespace: str, loopback_pod: tuple[str, FakeSidecar]
) -> None:
    pod, sidecar = loopback_pod
    kube.create(
        pool_manifest(
            "res", namespace, replicas=0, minReplicas=0, maxReplicas=1, autoscaling={"pollIntervalSeconds": 5}
        )
    )
    kube.create(adapter_manifest("hot", namespace, pool="res"))
    kube.create(adapter_manifest("cold", namespace, pool="res"))
    wait_until("the operator to poll the loopback pod", lambda: sidecar.polls > 0, timeout=60)

    sidecar.resident = {"gpu": ["hot"], "ram": [], "disk": [], "counts": {"gpu": 1, "ram": 0, "disk": 0}}
    wait_until(
        "hot's status to show it resident on the pod's GPU",
        lambda: _status(kube, namespace, "hot").get("residentPods") == [{"pod": pod, "tier": "gpu"}],
        timeout=60,
    )
    status = _status(kube, namespace, "hot")
    assert status["resident"] == {"gpu": 1, "ram": 0, "disk": 0}, status
    assert status["residentSummary"] == f"{pod}(gpu)", status
    cols = _columns(namespace, "hot")
    assert (cols["GPU"], cols["RAM"], cols["DISK"]) == ("1", "0", "0"), cols
    assert cols["RESIDENT"] == f"{pod}(gpu)", cols
    # An adapter no pod reports is never written (no status write per adapter per poll).
    assert "resident" not in _status(kube, namespace, "cold")
    assert _columns(namespace, "cold")["GPU"] in ("", "<none>")

    sidecar.resident = {"gpu": [], "ram": [], "disk": ["hot"], "counts": {"gpu": 0, "ram": 0, "disk": 1}}
    wait_until(
        "hot to move to the disk tier",
        lambda: _status(kube, namespace, "hot").get("resident") == {"gpu": 0, "ram": 0, "disk": 1},
        timeout=60,
    )

    sidecar.resident = {"gpu": [], "ram": [], "disk": [], "counts": {"gpu": 0, "ram": 0, "disk": 0}}
    wait_until(
        "hot's residency to go away when the pod stops reporting it",
        lambda: (
            (s := _status(kube, namespace, "hot")).get("residentPods") == []
            and s.get("resident") == {"gpu": 0, "ram": 0, "disk": 0}
        ),
        timeout=60,
    )
    assert _columns(namespace, "hot")["GPU"] == "0"
    assert "resident" not in _status(kube, namespace, "cold")
