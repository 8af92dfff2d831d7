"""Smoke test of the real node: the inference image runs the worker (on loopback)
and its sidecar with the `tiny` model under the pod security settings the
operator uses (non-root, read-only root filesystem, all capabilities dropped),
the sidecar's /readyz answers on the pod IP, and a ClusterIP Service in front
of it answers through kube-proxy. The routing table and the hop key come from
a ConfigMap and a Secret the test makes (the operator's job in a pool).
"""

from __future__ import annotations

import base64
import json
import secrets
import time

import pytest

from tests.e2e.support import REAL_NODE_TOLERATION, assert_local_route, http, kubectl, kubectl_json

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n"


def table_and_key(name: str) -> list[dict]:
    table = {
        "version": 1,
        "generation": 1,
        "pools": {"tiny": {"baseModel": "tiny", "endpoints": [{"name": name, "url": "http://127.0.0.1:8080"}]}},
        "adapters": {},
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-table"},
            "data": {"table.json": json.dumps(table)},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-hop-key"},
            "stringData": {"hop-key": secrets.token_hex(32) + "\n"},
        },
    ]


def worker_pod(name: str, image: str, node: str) -> dict:
    # Mirrors what the operator builds for a pool (loraplex_operator.logic.manifests): the worker on
    # loopback, the sidecar on the pod IP; here the table is a file instead of the ConfigMap watch.
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [REAL_NODE_TOLERATION],
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "worker",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": [
                        "worker",
                        "--model",
                        "tiny",
                        "--dtype",
                        "float32",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "8081",
                        "--hop-key-file",
                        "/etc/loraplex/hop-key",
                        "--gpu-slots",
                        "2",
                        "--ram-cache-mb",
                        "64",
                        "--disk-cache-mb",
                        "64",
                        "--disk-cache-dir",
                        "/var/cache/loraplex",
                        "--hf-home",
                        "/models",
                        "--torch-threads",
                        "1",
                    ],
                    "env": [
                        {"name": "HF_HOME", "value": "/models"},
                        {"name": "HF_HUB_OFFLINE", "value": "1"},
                        {"name": "TMPDIR", "value": "/tmp"},
                    ],
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
                    "securityContext": security,
                    "volumeMounts": [
                        {"name": "models", "mountPath": "/models"},
                        {"name": "adapters", "mountPath": "/var/cache/loraplex"},
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "dshm", "mountPath": "/dev/shm"},
                        {"name": "hop-key", "mountPath": "/etc/loraplex/hop-key", "readOnly": True},
                    ],
                },
                {
                    "name": "sidecar",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "args": [
                        "sidecar",
                        "--host",
                        "0.0.0.0",
                        "--port",
                        "8080",
                        "--worker-url",
                        "http://127.0.0.1:8081",
                        "--pod-name",
                        name,
                        "--table-file",
                        "/etc/loraplex/table/table.json",
                        "--hop-key-file",
                        "/etc/loraplex/hop-key",
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                    "readinessProbe": {
                        "httpGet": {"path": "/readyz", "port": "http"},
                        "periodSeconds": 2,
                        "failureThreshold": 3,
                    },
                    "securityContext": security,
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "table", "mountPath": "/etc/loraplex/table", "readOnly": True},
                        {"name": "hop-key", "mountPath": "/etc/loraplex/hop-key", "readOnly": True},
                    ],
                },
            ],
            "volumes": [
                {"name": "table", "configMap": {"name": f"{name}-table"}},
                {"name": "hop-key", "secret": {"secretName": f"{name}-hop-key", "defaultMode": 0o440}},
                {"name": "models", "emptyDir": {}},
                {"name": "adapters", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
            ],
        },
    }


def wait_ready(ns: str, pod: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        obj = kubectl_json("get", "pod", pod, "-n", ns)
        conds = {c["type"]: c["status"] for c in obj["status"].get("conditions", [])}
        if conds.get("Ready") == "True":
            return obj
        if time.monotonic() > deadline:
            logs = kubectl("logs", pod, "-n", ns, "--tail=40", check=False)
            events = kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False)
            pytest.fail(
                f"pod {pod} not Ready after {timeout}s: {json.dumps(obj['status'], indent=1)}\n"
                f"logs:\n{logs}\nevents:\n{events}"
            )
        time.sleep(1)


def test_worker_pod_and_service(namespace: str, real_node: str, inference_image: str) -> None:
    t0 = time.monotonic()
    for obj in table_and_key("tiny-worker"):
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(worker_pod("tiny-worker", inference_image, real_node))
    )
    kubectl("create", "service", "clusterip", "tiny-worker", "--tcp=80:8080", "-n", namespace)
    pod = wait_ready(namespace, "tiny-worker", timeout=300)
    ready_s = time.monotonic() - t0
    assert pod["spec"]["nodeName"] == real_node

    pod_ip = pod["status"]["podIP"]
    assert_local_route(pod_ip)
    status, body = http("GET", f"http://{pod_ip}:8080/readyz")
    assert status == 200, body

    svc_ip = kubectl_json("get", "service", "tiny-worker", "-n", namespace)["spec"]["clusterIP"]
    assert_local_route(svc_ip)
    deadline = time.monotonic() + 30  # kube-proxy syncs the endpoint within a second or two
    while True:
        try:
            status, body = http("GET", f"http://{svc_ip}/readyz", timeout=3)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert status == 200, body

    # A real generation through the Service: diffusion on the CPU in the container.
    status, body = http(
        "POST",
        f"http://{svc_ip}/v1/images/generations",
        {"model": "tiny", "prompt": "a red fox", "size": "64x64", "steps": 2, "seed": 1},
        timeout=180,
    )
    assert status == 200, body
    assert base64.b64decode(json.loads(body)["data"][0]["b64_json"]).startswith(PNG)
    print(f"worker pod Ready in {ready_s:.1f}s on {real_node}")


def test_pod_reaches_the_apiserver_in_cluster(namespace: str, real_node: str, operator_image: str) -> None:
    """In-cluster config (10.96.0.1:443, the ServiceAccount token and CA) works from the real node,
    and the operator image runs under the chart's security settings."""
    script = (
        "from kubernetes import client, config; config.load_incluster_config(); "
        "print('server', client.VersionApi().get_code().git_version)"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "api-check"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": real_node},
            "tolerations": [REAL_NODE_TOLERATION],
            "restartPolicy": "Never",
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "check",
                    "image": operator_image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + 120
    while (phase := kubectl_json("get", "pod", "api-check", "-n", namespace)["status"].get("phase")) not in (
        "Succeeded",
        "Failed",
    ):
        assert time.monotonic() < deadline, f"api-check pod still {phase} after 120s"
        time.sleep(1)
    logs = kubectl("logs", "api-check", "-n", namespace)
    assert phase == "Succeeded", logs
    assert "server v1.36" in logs, logs
