"""Helpers of the e2e tier: kubectl/helm against the test cluster, HTTP to
Services from the host, steady load, pool manifests and waits."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOME = Path.home()
CLUSTER_DIR = Path(os.environ.get("LORAPLEX_CLUSTER_DIR", HOME / ".cache/loraplex/cluster"))
NODE_DIR = Path(os.environ.get("LORAPLEX_REAL_NODE_DIR", HOME / ".cache/loraplex/real-node"))
K8S_BIN = Path(os.environ.get("LORAPLEX_K8S_CACHE", HOME / ".cache/loraplex/k8s")) / "bin"
NODE_NAME = os.environ.get("LORAPLEX_REAL_NODE_NAME", "loraplex-real-0")
BRIDGE = "lpxbr0"
INFERENCE_IMAGE = os.environ.get("LORAPLEX_E2E_INFERENCE_IMAGE", "localhost/loraplex/inference:dev")
OPERATOR_IMAGE = os.environ.get("LORAPLEX_E2E_OPERATOR_IMAGE", "localhost/loraplex/operator:dev")
REAL_NODE_TOLERATION = {"key": "loraplex.io/real-node", "operator": "Exists", "effect": "NoSchedule"}


def _pid_alive(name: str) -> bool:
    try:
        pid = int((NODE_DIR / "pids" / f"{name}.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def real_node_up() -> bool:
    return all(_pid_alive(n) for n in ("containerd", "kubelet", "kube-proxy"))


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    r = subprocess.run(
        [str(K8S_BIN / "kubectl"), "--kubeconfig", str(CLUSTER_DIR / "kubeconfig"), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def assert_local_route(ip: str) -> None:
    """Never send to an address that would leave the machine (the default route)."""
    out = subprocess.run(["ip", "-4", "route", "get", ip], capture_output=True, text=True).stdout
    assert f"dev {BRIDGE} " in out or out.startswith("local "), f"{ip} is not routed to {BRIDGE}: {out!r}"


PNG = b"\x89PNG\r\n\x1a\n"
GEN = {"model": "tiny", "prompt": "a red fox", "size": "64x64", "steps": 2, "seed": 1}


def helm(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [str(K8S_BIN / "helm"), "--kubeconfig", str(CLUSTER_DIR / "kubeconfig"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def split_ref(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


def http(method: str, url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def png_of(body: bytes) -> bytes:
    png = base64.b64decode(json.loads(body)["data"][0]["b64_json"])
    assert png.startswith(PNG), png[:16]
    return png


def new_namespace(prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    deadline = time.monotonic() + 60
    while kubectl("get", "serviceaccount", "default", "-n", ns, "-o", "name", check=False).strip() == "":
        assert time.monotonic() < deadline, f"no default ServiceAccount in {ns} after 60s"
        time.sleep(0.5)
    return ns


def delete_namespace(ns: str, wait: bool) -> None:
    kubectl("delete", "namespace", ns, f"--wait={str(wait).lower()}", "--timeout=120s", check=False, timeout=150)


def tiny_pool(name: str, node: str, image: str, replicas: int = 1, gpus: int = 1, **extra: Any) -> dict:
    return {
        "apiVersion": "loraplex.io/v1alpha1",
        "kind": "BaseModelPool",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny", "dtype": "float32"},
            "image": image,
            "imagePullPolicy": "Never",
            "replicas": replicas,
            "minReplicas": replicas,
            "maxReplicas": max(replicas, 1),
            "autoscaling": {"enabled": False},
            "gpu": {"count": gpus},
            "resources": {"cpu": "500m", "memory": "3Gi"},
            "adapterCache": {"gpuSlots": 2, "ramCacheMB": 64, "diskCacheMB": 64, "maxRank": 16},
            "limits": {"maxSteps": 8, "maxWidth": 128, "maxHeight": 128, "requestTimeoutSeconds": 120},
            "startupTimeoutSeconds": 300,
            "drainSeconds": 3,
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [REAL_NODE_TOLERATION],
            **extra,
        },
    }


def lora_adapter(name: str, pool: str, source: dict) -> dict:
    """A LoraAdapter manifest (the namespace comes from `kubectl -n`)."""
    return {
        "apiVersion": "loraplex.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {"name": name},
        "spec": {"pool": pool, "source": source},
    }


def host_path_claim(ns: str, node: str, host_dir: Path, claim: str) -> tuple[str, list[dict]]:
    """A PersistentVolume on `node`'s `host_dir` (hostPath) bound to the claim `ns/claim`: (PV name, manifests).
    Pools mount such a claim as their model cache (`spec.modelCache.claimName`), so files written there on the
    host are path sources at /models/... in the pods."""
    pv = f"{ns}-{claim}"
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(host_dir), "type": "Directory"},
                "claimRef": {"namespace": ns, "name": claim},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                                ]
                            }
                        ]
                    }
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    return pv, docs


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def diagnose(ns: str) -> str:
    return "\n".join(
        [
            kubectl("get", "basemodelpools,deploy,pods,svc,endpointslices", "-n", ns, "-o", "wide", check=False),
            kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False)[-4000:],
        ]
    )


def wait_pool_ready(ns: str, pool: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        obj = kubectl_json("get", "basemodelpool", pool, "-n", ns)
        if conditions(obj).get("Ready", {}).get("status") == "True" and (obj["status"].get("readyReplicas") or 0) >= 1:
            return obj
        if time.monotonic() > deadline:
            pytest.fail(f"pool {pool} not Ready after {timeout}s: {json.dumps(obj.get('status'))}\n{diagnose(ns)}")
        time.sleep(1)


def service_ip(ns: str, name: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        ip = kubectl_json("get", "service", name, "-n", ns)["spec"].get("clusterIP") if _exists(ns, name) else None
        if ip:
            assert_local_route(ip)
            return ip
        assert time.monotonic() < deadline, f"no Service {ns}/{name} after {timeout}s"
        time.sleep(1)


def _exists(ns: str, svc: str) -> bool:
    return kubectl("get", "service", svc, "-n", ns, "-o", "name", check=False).strip() != ""


def generate_until_ok(url: str, body: dict, timeout: float) -> tuple[float, bytes]:
    """Retry until the Service answers 200 (kube-proxy and the routing table catch up): seconds, body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            status, data = http("POST", url, body, timeout=120)
            if status == 200:
                return time.monotonic() - t, data
            last = (status, data[:300])
        except OSError as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"no 200 from {url} in {timeout}s; last: {last!r}")


class Load:
    """Steady load through the pool's Service from the host: `workers` clients, each one request at a
    time, no client-side retry. Every outcome is kept: the test then asks for 0 failures."""

    def __init__(self, url: str, workers: int = 2) -> None:
        self.url, self.stop = url, threading.Event()
        self.ok = 0
        self.failures: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]
        self.t0 = time.monotonic()

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                status, body = http("POST", self.url, {**GEN, "seed": i * 100000 + n}, timeout=120)
                err = None if status == 200 and body.startswith(b"{") else f"HTTP {status}: {body[:200]!r}"
            except OSError as e:
                err = f"{type(e).__name__}: {e}"
            with self.lock:
                if err is None:
                    self.ok += 1
                else:
                    self.failures.append((round(time.monotonic() - self.t0, 1), err))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=130)


def ready_pods(ns: str, pool: str = "", selector: str = "") -> list[dict]:
    """Ready pods not being deleted: a pool's, or those a label selector names."""
    selector = selector or f"app.kubernetes.io/instance={pool}"
    pods = kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"]
    return [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def wait_ready_pods(
    ns: str, pool: str, n: int, timeout: float, exclude: frozenset[str] | set[str] = frozenset()
) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        pods = [p for p in ready_pods(ns, pool) if p["metadata"]["name"] not in exclude]
        if len(pods) >= n:
            return pods
        if time.monotonic() > deadline:
            pytest.fail(f"{pool}: fewer than {n} ready pods after {timeout}s\n{diagnose(ns)}")
        time.sleep(1)


def kill_container(pod: dict, container: str) -> None:
    """SIGKILL the container's task in the node's containerd (as an OOM kill or a crash would)."""
    cid = next(s["containerID"] for s in pod["status"]["containerStatuses"] if s["name"] == container)
    sock = NODE_DIR / "containerd" / "containerd.sock"
    subprocess.run(
        ["ctr", "-a", str(sock), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", cid.split("://", 1)[1]],
        check=True,
        capture_output=True,
        timeout=30,
    )


def restarts(ns: str, pod: str, container: str) -> int:
    st = kubectl_json("get", "pod", pod, "-n", ns)["status"]["containerStatuses"]
    return next(s["restartCount"] for s in st if s["name"] == container)
