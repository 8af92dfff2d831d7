"""BaseModelPool on the real control plane: Deployment, pods on fake GPU nodes, status, scaling, GC."""

from __future__ import annotations

from typing import Any

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import (
    OperatorProcess,
    condition,
    kubectl,
    pool_manifest,
    routing_table,
    wait_until,
)


def get_pool(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    return kube.get(c.API_VERSION, c.POOL_PLURAL, ns, name)


def pool_pods(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    return [
        p for p in kube.list("v1", "pods", ns, f"{c.LABEL_POOL}={name}") if not p["metadata"].get("deletionTimestamp")
    ]


def test_pool_runs_on_fake_gpu_nodes_and_reports_ready(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.create(pool_manifest("tiny", namespace, replicas=2))
    pool = wait_until(
        "pool Ready",
        lambda: (p := get_pool(kube, namespace, "tiny")) and condition(p, "Ready").get("status") == "True" and p,
        timeout=90,
    )
    status = pool["status"]
    assert status["readyReplicas"] == 2 and status["desiredReplicas"] == 2
    assert status["observedGeneration"] == pool["metadata"]["generation"]
    assert {cnd["type"] for cnd in status["conditions"]} == {"Ready", "Progressing", "Degraded"}
    assert condition(pool, "Degraded")["status"] == "False"
    assert all(cnd["lastTransitionTime"] and cnd["reason"] for cnd in status["conditions"])

    # Owned objects, with owner references to the pool.
    uid = pool["metadata"]["uid"]
    for api, plural, name in [
        ("apps/v1", "deployments", "tiny"),
        ("v1", "services", "tiny"),
        ("policy/v1", "poddisruptionbudgets", "tiny"),
        ("v1", "serviceaccounts", "tiny-inference"),
        ("rbac.authorization.k8s.io/v1", "roles", "tiny-inference"),
    ]:
        obj = kube.get(api, plural, namespace, name)
        assert obj is not None, f"{plural}/{name} missing"
        assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [uid]

    # Pods run on the fake GPU nodes, each holding a GPU.
    pods = pool_pods(kube, namespace, "tiny")
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        assert pod["status"]["phase"] == "Running"
        worker = next(ct for ct in pod["spec"]["containers"] if ct["name"] == "worker")
        assert worker["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")

    # The routing table lists the ready pods as the pool's endpoints.
    table = wait_until(
        "endpoints in the table",
        lambda: (t := routing_table(kube, namespace)) and len(t.pools["tiny"].endpoints) == 2 and t,
    )
    want = {(p["metadata"]["name"], f"http://{p['status']['podIP']}:8080") for p in pods}
    assert {(e.name, e.url) for e in table.pools["tiny"].endpoints} == want

    # kopf's bookkeeping is in annotations under the operator's prefix, never in status. kopf writes
    # them in its own patch after the handler, which can land after the status that said Ready.
    def bookkeeping() -> dict[str, str]:
        got = (get_pool(kube, namespace, "tiny") or {}).get("metadata", {}).get("annotations") or {}
        return got if any(k.startswith(c.KOPF_ANNOTATION_PREFIX + "/") for k in got) else {}

    annotations = wait_until("kopf's annotations on the pool", bookkeeping, timeout=30)
    assert not any(k.startswith("kopf.zalando.org") for k in annotations)
    assert set(status) <= {
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "desiredReplicas",
        "selector",
        "requestRate",
        "meanServiceSeconds",
        "adapters",
        "conditions",
    }

    # Printer columns.
    out = kubectl("-n", namespace, "get", "bmp", "tiny").stdout
    assert "MODEL" in out and "READY" in out and "DESIRED" in out and "AllReplicasReady" in out


def test_pool_asking_for_more_gpus_than_exist_is_degraded(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(pool_manifest("huge", namespace, replicas=1, gpu={"count": 8}))
    pool = wait_until(
        "pool Degraded",
        lambda: (p := get_pool(kube, namespace, "huge")) and condition(p, "Degraded").get("status") == "True" and p,
        timeout=90,
    )
    degraded = condition(pool, "Degraded")
    assert degraded["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in degraded["message"], degraded
    assert condition(pool, "Ready")["status"] == "False"
    assert pool["status"]["readyReplicas"] == 0


def test_scale_subresource_spec_change_and_garbage_collection(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(pool_manifest("scaled", namespace, replicas=1, maxReplicas=3))
    wait_until(
        "one pod ready",
        lambda: condition(get_pool(kube, namespace, "scaled"), "Ready").get("status") == "True",
        timeout=90,
    )

    kubectl("-n", namespace, "scale", "bmp/scaled", "--replicas=2")
    wait_until(
        "Deployment scaled to 2",
        lambda: kube.get("apps/v1", "deployments", namespace, "scaled")["spec"]["replicas"] == 2,
    )
    wait_until("2 ready", lambda: get_pool(kube, namespace, "scaled")["status"].get("readyReplicas") == 2, 90)
    scale = kube.get(c.API_VERSION, c.POOL_PLURAL, namespace, "scaled", "scale")
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert "loraplex.io/pool" not in scale["status"]["selector"]  # the Deployment's immutable selector
    refused = kubectl("-n", namespace, "scale", "bmp/scaled", "--replicas=9", check=False)
    assert refused.returncode != 0 and "replicas must be between" in refused.stderr

    # A spec change rolls the pods: a new ReplicaSet with the new template.
    before = kube.get("apps/v1", "deployments", namespace, "scaled")["metadata"]["generation"]
    kubectl(
        "-n",
        namespace,
        "patch",
        "bmp/scaled",
        "--type=merge",
        "-p",
        '{"spec": {"image": "ghcr.io/loraplex/inference:0.1.1"}}',
    )
    dep = wait_until(
        "Deployment rolled",
        lambda: (
            (d := kube.get("apps/v1", "deployments", namespace, "scaled"))
            and d["metadata"]["generation"] > before
            and d
        ),
    )
    images = {ct["image"] for ct in dep["spec"]["template"]["spec"]["containers"]}
    assert images == {"ghcr.io/loraplex/inference:0.1.1"}
    wait_until(
        "pods on the new image",
        lambda: {ct["image"] for p in pool_pods(kube, namespace, "scaled") for ct in p["spec"]["containers"]} == images,
        90,
    )

    # Deleting the pool garbage-collects what it owns (kube-controller-manager's GC). Generous waits: the GC
    # watches a custom resource only from its next discovery sync (every 30 s) after the CRD appeared, and
    # a reconcile in flight when the pool went may re-apply a child that the GC then collects again.
    kube.delete(c.API_VERSION, c.POOL_PLURAL, namespace, "scaled")
    wait_until("Deployment collected", lambda: kube.get("apps/v1", "deployments", namespace, "scaled") is None, 150)
    wait_until("Service collected", lambda: kube.get("v1", "services", namespace, "scaled") is None, 150)
    # No pool left: an explicitly empty table (sidecars refuse an unexplained one).
    wait_until(
        "routing table emptied", lambda: (t := routing_table(kube, namespace)) and not t.pools and not t.adapters, 60
    )


def test_namespace_hop_key_is_created_once_and_never_replaced(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """The operator (as the chart's ServiceAccount) creates the hop key with the first pool; a second pool and a
    restart keep it, since a new key would cut the namespace's pods and gateway off from each other."""
    kube.create(pool_manifest("first", namespace, replicas=0))
    secret = wait_until("the hop key Secret", lambda: kube.get("v1", "secrets", namespace, c.HOP_KEY_SECRET))
    key = secret["data"][c.HOP_KEY_DATA_KEY]
    assert len(key) > 64  # base64 of 64 hex characters and a newline
    dep = wait_until("the pool's Deployment", lambda: kube.get("apps/v1", "deployments", namespace, "first"))
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["hop-key"]["secret"]["secretName"] == c.HOP_KEY_SECRET
    kube.create(pool_manifest("second", namespace, replicas=0))
    wait_until("the second pool's Deployment", lambda: kube.get("apps/v1", "deployments", namespace, "second"))
    operator.stop()
    operator.start()
    kube.create(pool_manifest("third", namespace, replicas=0))
    wait_until("the third pool's Deployment", lambda: kube.get("apps/v1", "deployments", namespace, "third"))
    assert kube.get("v1", "secrets", namespace, c.HOP_KEY_SECRET)["data"][c.HOP_KEY_DATA_KEY] == key
