"""Day-2 behaviour on the real node: the autoscaler closed on real sidecars,
scale from zero through the gateway, an operator pod replaced without
duplicate writes, a crash-looping pool reported with its error.

Each test runs its pool(s) in a namespace of its own under the session's
chart release (the operator a real pod). Windows are shortened (seconds, not
minutes) so the loop closes within the test; the decisions are the same code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from tests.e2e.support import (
    CLUSTER_DIR,
    GEN,
    ROOT,
    Load,
    conditions,
    diagnose,
    generate_until_ok,
    helm,
    http,
    kubectl,
    kubectl_json,
    lora_adapter,
    png_of,
    ready_pods,
    service_ip,
    tiny_pool,
    wait_pool_ready,
    wait_ready_pods,
)

pytestmark = pytest.mark.e2e
OPERATOR = "app.kubernetes.io/component=operator"
T = TypeVar("T")


def pool_replicas(ns: str, pool: str) -> int:
    """The pool's replicas as the scale subresource reports them (what an HPA would read)."""
    scale = kubectl_json("get", "basemodelpool", pool, "-n", ns, "--subresource=scale")
    return int(scale["spec"].get("replicas") or 0)


def wait_for(what: str, fn: Callable[[], T], timeout: float, ns: str, interval: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{diagnose(ns)}")
        time.sleep(interval)


def autoscaling(**kw: object) -> dict:
    return {
        "enabled": True,
        "pollIntervalSeconds": 5,
        "scaleUpStabilizationSeconds": 0,
        "scaleDownStabilizationSeconds": 15,
        **kw,
    }


def test_autoscaler_follows_load_on_real_sidecars(
    release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str
) -> None:
    """Sustained load raises the pool 1 -> 2 through the scale subresource, from what the real sidecars'
    /v1/stats report; when the load stops it goes back to 1 after the (shortened) scale-down window.

    targetUtilization 1.0: the test's own first request, in flight at a poll, asks for exactly one pod
    (at the default 0.7 one request in flight is ceil(1 / 0.7) = 2, and the pool rose before the load
    began); three clients at once still ask for more than the two allowed."""
    ns = pool_ns
    pool = tiny_pool("tiny", real_node, inference_image, replicas=1, autoscaling=autoscaling(targetUtilization=1.0))
    pool["spec"].update({"minReplicas": 1, "maxReplicas": 2})
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pool))
    wait_ready_pods(ns, "tiny", 1, timeout=360)
    url = f"http://{service_ip(ns, 'tiny')}/v1/images/generations"
    generate_until_ok(url, GEN, timeout=60)
    assert pool_replicas(ns, "tiny") == 1

    with Load(url, workers=3) as load:
        t0 = time.monotonic()
        wait_for("the autoscaler to ask for 2 replicas", lambda: pool_replicas(ns, "tiny") == 2, 120, ns)
        up_s = time.monotonic() - t0
        wait_ready_pods(ns, "tiny", 2, timeout=240)
        ready_s = time.monotonic() - t0
        # Both pods serve: the new one is in every sidecar's table and takes a share of the load.
        time.sleep(8)
    served = {}
    for p in ready_pods(ns, "tiny"):
        stats = json.loads(
            kubectl("exec", p["metadata"]["name"], "-n", ns, "-c", "sidecar", "--", "python", "-c", STATS_SCRIPT)
        )
        served[p["metadata"]["name"]] = stats
    status = kubectl_json("get", "basemodelpool", "tiny", "-n", ns)["status"]
    assert status["desiredReplicas"] == 2 and status.get("requestRate", 0) > 0, status

    t1 = time.monotonic()
    wait_for("the pool to go back to 1 replica", lambda: pool_replicas(ns, "tiny") == 1, 120, ns)
    down_s = time.monotonic() - t1
    wait_for("one pod left", lambda: len(kubectl_json("get", "pods", "-n", ns)["items"]) == 1, 120, ns)
    print(
        f"FIGURES autoscaling: 1->2 asked {up_s:.1f}s after load began, 2 ready {ready_s:.1f}s; "
        f"back to 1 {down_s:.1f}s after the load stopped (window 15s); {load.ok} ok, {len(load.failures)} failed; "
        f"per pod worker requests: {served}"
    )
    assert not load.failures, load.failures
    assert len(served) == 2 and all(n > 0 for n in served.values()), f"a pod served nothing: {served}"


# Requests the pod's worker has completed, from its Prometheus metrics (loopback, inside the pod).
STATS_SCRIPT = """
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8081/metrics", timeout=10).read().decode()
ok = [ln for ln in text.splitlines() if ln.startswith("loraplex_worker_requests_total{") and 'status="200"' in ln]
print(int(sum(float(ln.rsplit(" ", 1)[1]) for ln in ok)))
"""


def test_scale_from_zero_through_the_gateway(
    release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str
) -> None:
    """A pool at 0 replicas: a request to the chart's gateway is held, the operator sees it in the
    gateway's /v1/stats and scales the pool to 1, the request succeeds; idle again, it returns to 0."""
    ns = pool_ns
    sys_ns, name = release
    pool = tiny_pool(
        "tiny",
        real_node,
        inference_image,
        replicas=0,
        autoscaling=autoscaling(idleToZeroSeconds=20, scaleDownStabilizationSeconds=5),
        routing={"activationTimeoutSeconds": 240},
    )
    pool["spec"].update({"minReplicas": 0, "maxReplicas": 1})
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pool))
    # The operator makes the namespace's hop key with its first pool; the gateway signs with it.
    wait_for(
        "the hop key Secret",
        lambda: kubectl("get", "secret", "loraplex-hop-key", "-n", ns, "-o", "name", check=False).strip(),
        60,
        ns,
    )
    wait_for("the pool at 0", lambda: pool_replicas(ns, "tiny") == 0, 60, ns)
    assert not kubectl_json("get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=tiny")["items"]

    gateway = [
        "--reuse-values",
        "--set",
        "gateway.enabled=true",
        "--set",
        f"gateway.namespace={ns}",
        "--set",
        "gateway.replicas=1",
        "--set",
        "gateway.resources.requests.cpu=50m",
        "--set-string",
        f"gateway.nodeSelector.kubernetes\\.io/hostname={real_node}",
        "--set",
        "gateway.tolerations[0].key=loraplex.io/real-node",
        "--set",
        "gateway.tolerations[0].operator=Exists",
        "--set",
        "gateway.tolerations[0].effect=NoSchedule",
    ]
    chart = str(ROOT / "charts" / "loraplex")
    try:
        helm("upgrade", name, chart, "-n", sys_ns, *gateway, "--wait", "--timeout", "180s")
        gw = f"http://{service_ip(ns, 'loraplex-gateway')}/v1/images/generations"
        wait_for("the gateway Ready", lambda: ready_pods(ns, selector="app.kubernetes.io/component=gateway"), 120, ns)
        t0 = time.monotonic()
        status, body = http("POST", gw, GEN, timeout=300)
        held_s = time.monotonic() - t0
        assert status == 200, (status, body[:300], diagnose(ns))
        png_of(body)
        assert pool_replicas(ns, "tiny") == 1
        t1 = time.monotonic()
        wait_for("the pool back at 0 after idleToZeroSeconds", lambda: pool_replicas(ns, "tiny") == 0, 120, ns)
        back_s = time.monotonic() - t1
        print(f"FIGURES scale from zero: held request answered in {held_s:.1f}s; back to 0 after {back_s:.1f}s")
    finally:
        off = ["--reuse-values", "--set", "gateway.enabled=false", "--wait"]
        helm("upgrade", name, chart, "-n", sys_ns, *off, check=False)


def audit_writes(since_offset: int, user: str) -> list[dict]:
    """Writes by `user` in the apiserver's audit log after byte `since_offset`."""
    out = []
    with open(CLUSTER_DIR / "logs" / "audit.log", "rb") as f:
        f.seek(since_offset)
        for line in f:
            ev = json.loads(line)
            if ev.get("user", {}).get("username") == user and ev.get("stage") == "ResponseComplete":
                out.append(ev)
    return out


def audit_offset() -> int:
    return (CLUSTER_DIR / "logs" / "audit.log").stat().st_size


def describe(ev: dict) -> str:
    ref = ev.get("objectRef", {})
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    code = ev.get("responseStatus", {}).get("code")
    return f"{ev['verb']} {ref.get('resource')}{sub} {ref.get('namespace', '')}/{ref.get('name', '')} -> {code}"


def test_operator_pod_replaced_converges_without_writes(
    release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str
) -> None:
    """The operator pod deleted while a pool and an adapter are settled: the replacement takes the lease,
    resumes every object, and writes nothing (the state it finds is the state it wants)."""
    ns = pool_ns
    sys_ns, _ = release
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(tiny_pool("tiny", real_node, inference_image)))
    adapter = lora_adapter("fox", "tiny", {"type": "path", "path": "/models/loras/fox.safetensors"})
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(adapter))
    wait_pool_ready(ns, "tiny", timeout=360)
    wait_for(
        "the adapter Ready",
        lambda: (
            conditions(kubectl_json("get", "loraadapter", "fox", "-n", ns)).get("Ready", {}).get("status") == "True"
        ),
        60,
        ns,
    )
    # Settled: no write by the operator for longer than its stats poll (15 s): status, table, children.
    op_pods = kubectl_json("get", "pods", "-n", sys_ns, "-l", OPERATOR)["items"]
    sa = op_pods[0]["spec"]["serviceAccountName"]
    user = f"system:serviceaccount:{sys_ns}:{sa}"

    def quiet_for(seconds: float) -> bool:
        off = audit_offset()
        time.sleep(seconds)
        return not [e for e in audit_writes(off, user) if e.get("objectRef", {}).get("namespace") == ns]

    wait_for("the operator to stop writing to the namespace", lambda: quiet_for(20), 150, ns, interval=0)
    before = {
        kind: kubectl_json("get", kind, "-n", ns)["items"]
        for kind in ("deployments", "services", "configmaps", "basemodelpools", "loraadapters")
    }

    off = audit_offset()
    old = {p["metadata"]["name"] for p in op_pods}
    t0 = time.monotonic()
    kubectl("delete", "pod", "-n", sys_ns, "-l", OPERATOR, "--wait=true")
    new = wait_for(
        "a new operator pod Ready",
        lambda: [
            p
            for p in ready_pods(sys_ns, selector="app.kubernetes.io/component=operator")
            if p["metadata"]["name"] not in old
        ],
        180,
        ns,
    )
    ready_s = time.monotonic() - t0
    # Time for the new leader to resume every object and run its timers and a few stats polls.
    time.sleep(30)
    writes = [e for e in audit_writes(off, user) if e.get("objectRef", {}).get("namespace") == ns]
    after = {
        kind: kubectl_json("get", kind, "-n", ns)["items"]
        for kind in ("deployments", "services", "configmaps", "basemodelpools", "loraadapters")
    }
    print(
        f"FIGURES operator pod replaced: new pod {new[0]['metadata']['name']} Ready in {ready_s:.1f}s; "
        f"{len(writes)} writes to the pool namespace in the 30s after"
    )
    statuses = [(o["metadata"]["name"], o.get("status")) for o in before["basemodelpools"] + after["basemodelpools"]]
    assert not writes, "\n".join(describe(e) for e in writes) + f"\npool status before/after: {statuses}"
    rv = {k: {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in v} for k, v in before.items()}
    assert rv == {k: {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in v} for k, v in after.items()}
    # And it still acts: a change after the takeover is applied.
    kubectl("patch", "basemodelpool", "tiny", "-n", ns, "--type=merge", "-p", '{"spec":{"limits":{"maxSteps":9}}}')
    wait_for(
        "the new operator to apply a spec change",
        lambda: (
            kubectl_json("get", "basemodelpool", "tiny", "-n", ns)["status"].get("observedGeneration")
            == kubectl_json("get", "basemodelpool", "tiny", "-n", ns)["metadata"]["generation"]
        ),
        60,
        ns,
    )


def test_crash_looping_pool_is_degraded_with_its_error(
    release: tuple[str, str], pool_ns: str, real_node: str, inference_image: str
) -> None:
    """A pool whose worker exits at start (its model directory, the empty model cache, holds no
    pipeline): Degraded, reason CrashLoopBackOff, and the message quotes the worker's last error line."""
    ns = pool_ns
    pool = tiny_pool("broken", real_node, inference_image, gpus=0)
    pool["spec"]["model"] = {"name": "/models", "dtype": "float32"}
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pool))

    def degraded() -> dict:
        cond = conditions(kubectl_json("get", "basemodelpool", "broken", "-n", ns)).get("Degraded", {})
        return cond if cond.get("status") == "True" and cond.get("reason") == "CrashLoopBackOff" else {}

    cond = wait_for("Degraded CrashLoopBackOff", degraded, 180, ns, interval=2)
    print("Degraded:", cond["message"])
    assert "container worker" in cond["message"] and "last exit" in cond["message"], cond
    assert "model_index.json" in cond["message"], cond
