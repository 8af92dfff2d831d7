"""The chart and the operator on the real node, end to end.

`helm install` of charts/loraplex with the locally built images (the operator a
real pod under its ServiceAccount, pinned to the real node), `helm test`; then
BaseModelPools that the operator pod turns into real pods: readiness, a PNG
through the pool's Service (kube-proxy), a missing image reported with its
reason. One pool of one replica on the `tiny` model: the machine has 2 cores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import (
    GEN,
    REAL_NODE_TOLERATION,
    Load,
    conditions,
    diagnose,
    generate_until_ok,
    helm,
    host_path_claim,
    http,
    kill_container,
    kubectl,
    kubectl_json,
    lora_adapter,
    png_of,
    ready_pods,
    restarts,
    service_ip,
    tiny_pool,
    wait_pool_ready,
    wait_ready_pods,
)
from tests.helpers.tls import make_ca, make_server_cert

pytestmark = pytest.mark.e2e


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
    from inference_pod.local.lora_factory import write_lora
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    host_dir = Path(tempfile.mkdtemp(prefix="lpx-e2e-lora-"))
    host_dir.chmod(0o777)  # the pods run as uid 10001; hostPath gets no fsGroup
    # Under loras/: a pool's path sources must lie under spec.adapterSources.pathRoots (default /models/loras).
    (host_dir / "loras").mkdir(mode=0o755)
    write_lora(host_dir / "loras" / "fox.safetensors", build_tiny_pipeline().unet, rank=4, seed=7, strength=3.0)
    (host_dir / "loras" / "fox.safetensors").chmod(0o644)
    pv, docs = host_path_claim(pool_ns, real_node, host_dir, "lora")
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

    adapter = lora_adapter("fox", "tiny", {"type": "path", "path": f"/models/{filename}"})
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


# An https file server inside the cluster: the inference image's python, a certificate for its Service IP.
ARTIFACTS = "app.kubernetes.io/instance"  # the label wait_ready_pods selects on
FILE_SERVER = """
import functools, http.server, ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv")
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), handler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"""


def test_adapter_from_an_https_url_inside_the_cluster(
    release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str, tmp_path: Path
) -> None:
    """A LoraAdapter whose source is an https URL of a file server in the cluster (a private CA, the pool's
    spec.adapterSources.caBundle): the pod fetches it, checks its sha256, and the image changes; `kubectl
    get lora` then shows where it is resident."""
    from inference_pod.local.lora_factory import write_lora
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    ns = pool_ns
    lora = tmp_path / "fox.safetensors"
    write_lora(lora, build_tiny_pipeline().unet, rank=4, seed=7, strength=3.0)
    data = lora.read_bytes()
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "artifacts"},
        "spec": {"selector": {ARTIFACTS: "artifacts"}, "ports": [{"port": 8443, "targetPort": 8443}]},
    }
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(svc))
    ip = service_ip(ns, "artifacts")
    ca = make_ca(tmp_path / "ca", "loraplex e2e artifacts CA")
    crt, key = make_server_cert(tmp_path / "server", ca, ip)
    server = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "artifacts-files"},
                "binaryData": {"fox.safetensors": base64.b64encode(data).decode()},
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "artifacts-tls"},
                "type": "kubernetes.io/tls",
                "stringData": {"tls.crt": crt.read_text(), "tls.key": key.read_text()},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "artifacts-ca"},
                "data": {"ca.crt": ca[0].read_text()},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "artifacts", "labels": {ARTIFACTS: "artifacts"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": real_node},
                    "tolerations": [REAL_NODE_TOLERATION],
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                    "containers": [
                        {
                            "name": "server",
                            "image": inference_image,
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-c", FILE_SERVER],
                            "ports": [{"containerPort": 8443}],
                            "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 1},
                            "volumeMounts": [
                                {"name": "files", "mountPath": "/srv"},
                                {"name": "tls", "mountPath": "/tls"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "files", "configMap": {"name": "artifacts-files"}},
                        {"name": "tls", "secret": {"secretName": "artifacts-tls"}},
                    ],
                },
            },
        ],
    }
    # create, not apply: apply would copy the file into a last-applied annotation (256 KiB at most).
    kubectl("create", "-n", ns, "-f", "-", input=json.dumps(server))
    sources = {"allowPrivateUrls": True, "caBundle": {"configMapName": "artifacts-ca"}}
    pool = tiny_pool("tiny", real_node, inference_image, adapterSources=sources)
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pool))
    wait_pool_ready(ns, "tiny", timeout=360)
    wait_ready_pods(ns, "artifacts", 1, timeout=120)
    url = f"http://{service_ip(ns, 'tiny')}/v1/images/generations"
    _, body = generate_until_ok(url, GEN, timeout=60)
    base = png_of(body)

    source = {"type": "url", "url": f"https://{ip}:8443/fox.safetensors", "sha256": hashlib.sha256(data).hexdigest()}
    adapter = lora_adapter("fox", "tiny", source)
    t0 = time.monotonic()
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(adapter))
    _, body = generate_until_ok(url, {**GEN, "model": "fox"}, timeout=120)
    first_s = time.monotonic() - t0
    assert png_of(body) != base, "the adapter from the URL did not change the image"
    print(f"FIGURES https URL adapter (private CA) apply->first image {first_s:.1f}s")

    # Where it is resident, from what the sidecars report (the operator's stats poll).
    deadline = time.monotonic() + 90
    while True:
        status = kubectl_json("get", "loraadapter", "fox", "-n", ns).get("status") or {}
        if (status.get("resident") or {}).get("gpu", 0) + (status.get("resident") or {}).get("ram", 0) >= 1:
            break
        assert time.monotonic() < deadline, f"no residency reported for fox: {status}"
        time.sleep(2)
    pods = {p["metadata"]["name"] for p in ready_pods(ns, "tiny")}
    assert {r["pod"] for r in status["residentPods"]} <= pods and status["residentPods"], status
    wide = kubectl("get", "lora", "fox", "-n", ns, "-o", "wide")
    assert any(p in wide for p in pods), wide
    print("kubectl get lora -o wide:\n" + wide)
