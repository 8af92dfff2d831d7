"""The chart and the operator on the real node, end to end.

`helm install` of charts/loraplex with the locally built images (the operator a
real pod under its ServiceAccount, pinned to the real node), `helm test`; then
BaseModelPools that the operator pod turns into real pods: readiness, a PNG
through the pool's Service (kube-proxy), a missing image reported with its
reason. One pool of one replica on the `tiny` model: the machine has 2 cores.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import (
    CLUSTER_DIR,
    K8S_BIN,
    REAL_NODE_TOLERATION,
    assert_local_route,
    kubectl,
    kubectl_json,
)

pytestmark = pytest.mark.e2e

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


def _split(ref: str) -> tuple[str, str]:
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


@pytest.fixture(scope="module")
def release(real_node: str, operator_image: str, inference_image: str) -> Iterator[tuple[str, str]]:
    """The chart installed with the local images, the operator pinned to the real node."""
    ns = new_namespace("lpx-e2e-sys")
    name = "lpx"
    op_repo, op_tag = _split(operator_image)
    inf_repo, inf_tag = _split(inference_image)
    t0 = time.monotonic()
    try:
        helm(
            "install",
            name,
            str(os.path.join(os.path.dirname(__file__), "..", "..", "charts", "loraplex")),
            "-n",
            ns,
            "--set",
            f"image.operator.repository={op_repo}",
            "--set-string",
            f"image.operator.tag={op_tag}",
            "--set",
            "image.operator.pullPolicy=Never",
            "--set",
            f"image.inference.repository={inf_repo}",
            "--set-string",
            f"image.inference.tag={inf_tag}",
            "--set",
            "image.inference.pullPolicy=Never",
            "--set",
            "operator.replicas=1",
            "--set",
            "operator.resources.requests.cpu=50m",
            "--set-string",
            f"operator.nodeSelector.kubernetes\\.io/hostname={real_node}",
            "--set",
            f"operator.tolerations[0].key={REAL_NODE_TOLERATION['key']}",
            "--set",
            "operator.tolerations[0].operator=Exists",
            "--set",
            "operator.tolerations[0].effect=NoSchedule",
            "--wait",
            "--timeout",
            "180s",
        )
        print(f"helm install --wait: {time.monotonic() - t0:.1f}s")
        yield ns, name
    finally:
        helm("uninstall", name, "-n", ns, "--wait", "--timeout", "60s", check=False, timeout=90)
        delete_namespace(ns, wait=False)


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


@pytest.fixture
def pool_ns(release: tuple[str, str]) -> Iterator[str]:
    ns = new_namespace("lpx-e2e")
    try:
        yield ns
    finally:
        # Pools first, then wait for their pods: the namespace controller re-checks a namespace whose
        # pods are terminating only after half their grace period (~70 s here), so a bare namespace
        # delete took 80 s. All before the release goes: the operator's pods would outlive it.
        kubectl("delete", "basemodelpools,loraadapters", "--all", "-n", ns, "--wait=true", check=False)
        deadline = time.monotonic() + 90
        while kubectl("get", "pods", "-n", ns, "-o", "name", check=False).strip() and time.monotonic() < deadline:
            time.sleep(1)
        delete_namespace(ns, wait=True)


def test_helm_test_passes(release: tuple[str, str], real_node: str) -> None:
    ns, name = release
    pods = kubectl_json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
    assert pods and all(p["spec"]["nodeName"] == real_node for p in pods), [p["spec"].get("nodeName") for p in pods]
    # Under the chart's ServiceAccount, not the namespace's default one.
    assert all(p["spec"]["serviceAccountName"].endswith("-operator") for p in pods)
    ready = [c for p in pods for c in p["status"].get("conditions", []) if c["type"] == "Ready"]
    assert ready and all(c["status"] == "True" for c in ready), ready
    r = helm("test", name, "-n", ns, "--logs", "--timeout", "120s", check=False, timeout=180)
    assert r.returncode == 0, f"helm test failed:\n{r.stdout}\n{r.stderr}\n{diagnose(ns)}"
    assert "Phase:          Succeeded" in r.stdout or "Succeeded" in r.stdout, r.stdout
    print(r.stdout[r.stdout.find("TEST SUITE") :])


def test_pool_serves_through_its_service(
    release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str
) -> None:
    """Pods made by the operator pod pass the real probes; a PNG through the pool's Service."""
    ns = pool_ns
    t0 = time.monotonic()
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(tiny_pool("tiny", real_node, inference_image)))
    pool = wait_pool_ready(ns, "tiny", timeout=360)
    ready_s = time.monotonic() - t0
    pods = kubectl_json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=tiny")["items"]
    assert pods and all(p["spec"]["nodeName"] == real_node for p in pods)
    svc = service_ip(ns, "tiny")
    first_s, body = generate_until_ok(f"http://{svc}/v1/images/generations", GEN, timeout=120)
    first_image_s = time.monotonic() - t0
    png_of(body)

    # Latency: through the Service (kube-proxy + sidecar) from the host, and inside the pod
    # the sidecar vs the worker alone on loopback (same requests, warm).
    n = 5
    pod = pods[0]["metadata"]["name"]
    script = (
        "import json,time,urllib.request as u\n"
        "def run(port):\n"
        "  out=[]\n"
        f"  for i in range({n}):\n"
        f"    b=json.dumps(dict({GEN!r}, seed=i)).encode()\n"
        "    r=u.Request(f'http://127.0.0.1:{port}/v1/images/generations',data=b,headers={'Content-Type':'application/json'})\n"
        "    t=time.monotonic(); u.urlopen(r,timeout=120).read(); out.append(time.monotonic()-t)\n"
        "  return out\n"
        "run(8081)  # warm-up\n"
        "print(json.dumps({'worker':run(8081),'sidecar':run(8080)}))\n"
    )
    inner = json.loads(kubectl("exec", pod, "-n", ns, "-c", "sidecar", "--", "python", "-c", script, timeout=300))
    # After the in-pod runs, so neither side pays the warm-up.
    via_service = []
    for i in range(n):
        t = time.monotonic()
        status, body = http("POST", f"http://{svc}/v1/images/generations", {**GEN, "seed": i}, timeout=120)
        via_service.append(time.monotonic() - t)
        assert status == 200, body
    med = {
        "service": statistics.median(via_service),
        "sidecar": statistics.median(inner["sidecar"]),
        "worker": statistics.median(inner["worker"]),
    }
    print(
        f"FIGURES pool apply->Ready {ready_s:.1f}s, apply->first image {first_image_s:.1f}s "
        f"(first request {first_s:.2f}s); median of {n} (64x64, 2 steps): "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in med.items())
    )
    assert conditions(pool)["Degraded"]["status"] == "False", pool["status"]


def test_missing_image_is_reported_with_its_reason(release: tuple[str, str], pool_ns: str, real_node: str) -> None:
    """A pool whose image is not on the node (pullPolicy Never): Degraded with the kubelet's reason."""
    ns = pool_ns
    kubectl(
        "apply",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps(tiny_pool("ghost", real_node, "localhost/loraplex/does-not-exist:dev", gpus=0)),
    )
    deadline = time.monotonic() + 120
    while True:
        obj = kubectl_json("get", "basemodelpool", "ghost", "-n", ns)
        degraded = conditions(obj).get("Degraded", {})
        if degraded.get("status") == "True":
            break
        assert time.monotonic() < deadline, f"no Degraded condition after 120s: {obj.get('status')}\n{diagnose(ns)}"
        time.sleep(2)
    # pullPolicy Never: the kubelet's reason (was not a failing reason: the pool stayed Progressing).
    assert degraded["reason"] == "ErrImageNeverPull", degraded
    assert "does-not-exist" in degraded["message"], degraded
    assert conditions(obj)["Ready"]["status"] == "False"


class Load:
    """Steady load through the pool's Service from the host: `workers` clients, each one request at a
    time, no client-side retry. Every outcome is kept: the test then asks for 0 failures."""

    def __init__(self, url: str, workers: int = 2) -> None:
        import threading

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


def ready_pods(ns: str, pool: str) -> list[dict]:
    pods = kubectl_json("get", "pods", "-n", ns, "-l", f"app.kubernetes.io/instance={pool}")["items"]
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
    from tests.e2e.conftest import NODE_DIR

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


def test_pod_killed_under_load(release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str) -> None:
    """Two pods (the node's 2 fake GPUs); under steady load a worker container is SIGKILLed, then the
    other pod is force-deleted: no request fails from the client's view."""
    ns = pool_ns
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(tiny_pool("tiny", real_node, inference_image, replicas=2)))
    a, b = (p["metadata"]["name"] for p in wait_ready_pods(ns, "tiny", 2, timeout=360)[:2])
    url = f"http://{service_ip(ns, 'tiny')}/v1/images/generations"
    generate_until_ok(url, GEN, timeout=60)
    time.sleep(3)  # every sidecar's table has both pods
    with Load(url) as load:
        time.sleep(5)
        before = restarts(ns, a, "worker")
        kill_container(kubectl_json("get", "pod", a, "-n", ns), "worker")
        t_kill = time.monotonic()
        deadline = time.monotonic() + 180
        while not (
            restarts(ns, a, "worker") > before and any(p["metadata"]["name"] == a for p in ready_pods(ns, "tiny"))
        ):
            assert time.monotonic() < deadline, f"{a} not back after its worker was killed\n{diagnose(ns)}"
            time.sleep(1)
        back_s = time.monotonic() - t_kill
        time.sleep(5)
        kubectl("delete", "pod", b, "-n", ns, "--force", "--grace-period=0", check=False)
        t_del = time.monotonic()
        wait_ready_pods(ns, "tiny", 2, timeout=240, exclude={b})
        replaced_s = time.monotonic() - t_del
        time.sleep(5)
    print(
        f"FIGURES kill: worker back in {back_s:.1f}s, force-deleted pod replaced in {replaced_s:.1f}s; "
        f"{load.ok} ok, {len(load.failures)} failed"
    )
    assert load.ok > 0
    assert not load.failures, load.failures


def test_rolling_update_under_load(
    release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str
) -> None:
    """A spec change rolls the pool's pod (surge one: the second fake GPU) under steady load: 0 failures."""
    ns = pool_ns
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(tiny_pool("tiny", real_node, inference_image)))
    (old,) = (p["metadata"]["name"] for p in wait_ready_pods(ns, "tiny", 1, timeout=360)[:1])
    url = f"http://{service_ip(ns, 'tiny')}/v1/images/generations"
    generate_until_ok(url, GEN, timeout=60)
    with Load(url) as load:
        time.sleep(5)
        t = time.monotonic()
        kubectl("patch", "basemodelpool", "tiny", "-n", ns, "--type=merge", "-p", '{"spec":{"limits":{"maxSteps":9}}}')
        deadline = time.monotonic() + 300
        while True:
            names = {
                p["metadata"]["name"]
                for p in kubectl_json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=tiny")["items"]
            }
            if old not in names and len(ready_pods(ns, "tiny")) == 1:
                break
            assert time.monotonic() < deadline, f"rollout not done after 300s\n{diagnose(ns)}"
            time.sleep(1)
        rolled_s = time.monotonic() - t
        time.sleep(5)
    print(f"FIGURES rolling update: {rolled_s:.1f}s; {load.ok} ok, {len(load.failures)} failed")
    assert load.ok > 0
    assert not load.failures, load.failures


@pytest.fixture
def adapter_volume(pool_ns: str, real_node: str) -> Iterator[tuple[str, str]]:
    """A generated LoRA for the tiny model in a host directory, as a PVC (hostPath PV on the real node).

    URL sources must be https (CRD rule) and a pod cannot be told to trust a local CA, so the
    adapter is a path source on the pool's model-cache volume (an existing claim)."""
    import shutil
    import tempfile
    from pathlib import Path

    from inference_pod.local.lora_factory import write_lora
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    host_dir = Path(tempfile.mkdtemp(prefix="lpx-e2e-lora-"))
    host_dir.chmod(0o777)  # the pods run as uid 10001; hostPath gets no fsGroup
    # Under loras/: a pool's path sources must lie under spec.adapterSources.pathRoots (default /models/loras).
    (host_dir / "loras").mkdir(mode=0o755)
    write_lora(host_dir / "loras" / "fox.safetensors", build_tiny_pipeline().unet, rank=4, seed=7, strength=3.0)
    (host_dir / "loras" / "fox.safetensors").chmod(0o644)
    pv = f"{pool_ns}-lora"
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
                "claimRef": {"namespace": pool_ns, "name": "lora"},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [real_node]}
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
            "metadata": {"name": "lora", "namespace": pool_ns},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    try:
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        yield "lora", "loras/fox.safetensors"
    finally:
        kubectl("delete", "namespace", pool_ns, "--wait=true", "--timeout=120s", check=False, timeout=150)
        kubectl("delete", "pv", pv, "--wait=false", check=False)
        shutil.rmtree(host_dir, ignore_errors=True)


def test_adapter_changes_the_image(
    release: tuple[str, str], pool_ns: str, adapter_volume: tuple[str, str], real_node: str, inference_image: str
) -> None:
    """A LoraAdapter applied to a running pool: the same request (seed) names it and gets another image."""
    ns = pool_ns
    claim, filename = adapter_volume
    pool = tiny_pool("tiny", real_node, inference_image, modelCache={"claimName": claim})
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pool))
    wait_pool_ready(ns, "tiny", timeout=360)
    url = f"http://{service_ip(ns, 'tiny')}/v1/images/generations"
    _, body = generate_until_ok(url, GEN, timeout=60)
    base = png_of(body)

    adapter = {
        "apiVersion": "loraplex.io/v1alpha1",
        "kind": "LoraAdapter",
        "metadata": {"name": "fox"},
        "spec": {"pool": "tiny", "source": {"type": "path", "path": f"/models/{filename}"}},
    }
    t0 = time.monotonic()
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(adapter))
    _, body = generate_until_ok(url, {**GEN, "model": "fox"}, timeout=120)
    first_s = time.monotonic() - t0
    with_lora = png_of(body)
    status, body = http("POST", url, {**GEN, "model": "fox"}, timeout=120)
    assert status == 200, body
    warm = time.monotonic()
    http("POST", url, {**GEN, "model": "fox", "seed": 2}, timeout=120)
    warm_s = time.monotonic() - warm
    print(f"FIGURES adapter apply->first image {first_s:.1f}s; warm adapter request {warm_s * 1000:.0f} ms")
    assert with_lora != base, "the adapter did not change the image"
    obj = kubectl_json("get", "loraadapter", "fox", "-n", ns)
    print("adapter status:", json.dumps(obj.get("status", {}))[:400])
