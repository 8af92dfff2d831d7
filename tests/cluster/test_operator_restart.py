"""Kill the operator mid-way (SIGKILL), change things while it is down, restart: it converges."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.operator_burst import ShardWatch, adapter_body
from benchmarks.operator_scale import audit_events, audit_mark, operator_writes
from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import (
    CLUSTER_DIR,
    OperatorProcess,
    condition,
    pool_manifest,
    routing_table,
    wait_until,
)


def test_killed_and_restarted_operator_converges(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.create(pool_manifest("tiny", namespace, replicas=1))
    wait_until(
        "pool Ready",
        lambda: condition(kube.get(c.API_VERSION, c.POOL_PLURAL, namespace, "tiny"), "Ready").get("status") == "True",
        timeout=90,
    )
    names = [f"r-{i:04d}" for i in range(300)]

    # Create adapters from a background thread and kill the operator while they arrive.
    def create_all() -> None:
        with ThreadPoolExecutor(max_workers=8) as ex:
            list(ex.map(lambda n: kube.create(adapter_body(namespace, n, "tiny")), names[:200]))

    creator = threading.Thread(target=create_all)
    creator.start()
    wait_until(
        "some adapters routed",
        lambda: (t := routing_table(kube, namespace)) and len(t.adapters) >= 20,
        timeout=60,
        interval=0.05,
    )
    operator.kill()
    creator.join()

    # While it is down: more adapters, a deletion, a scale change.
    for n in names[200:]:
        kube.create(adapter_body(namespace, n, "tiny"))
    kube.delete(c.API_VERSION, c.ADAPTER_PLURAL, namespace, names[0])
    kube.merge_patch(c.API_VERSION, c.POOL_PLURAL, namespace, "tiny", {"spec": {"replicas": 2}})

    operator.start()
    want = set(names[1:])
    wait_until(
        "table converged", lambda: (t := routing_table(kube, namespace)) and set(t.adapters) == want, timeout=120
    )
    wait_until(
        "every adapter Ready",
        lambda: (
            sum(
                1
                for a in kube.list(c.API_VERSION, c.ADAPTER_PLURAL, namespace)
                if (a.get("status") or {}).get("phase") == "Ready"
            )
            == len(want)
        ),
        timeout=240,
        interval=1.0,
    )
    wait_until(
        "pool Ready at 2",
        lambda: (
            (p := kube.get(c.API_VERSION, c.POOL_PLURAL, namespace, "tiny"))
            and p["status"].get("readyReplicas") == 2
            and condition(p, "Ready").get("status") == "True"
        ),
        90,
    )

    # No duplicates: one Deployment, one ReplicaSet (scaling does not roll), one set of shards.
    assert len(kube.list("apps/v1", "deployments", namespace)) == 1
    assert len(kube.list("apps/v1", "replicasets", namespace)) == 1
    shards = kube.list("v1", "configmaps", namespace, f"{c.LABEL_ROUTING_TABLE}=true")
    assert len(shards) == int(shards[0]["metadata"]["annotations"][c.ANNOTATION_SHARDS])

    # Restart once more with nothing changed: level-triggered and idempotent, so nothing is written.
    # (First let the running operator finish: the second pod's endpoint may still be on its way.)
    wait_until("both endpoints routed", lambda: len(routing_table(kube, namespace).pools["tiny"].endpoints) == 2)
    time.sleep(4)
    before = {
        cm["metadata"]["name"]: cm["data"]
        for cm in kube.list("v1", "configmaps", namespace, f"{c.LABEL_ROUTING_TABLE}=true")
    }
    watch = ShardWatch(kube, namespace)
    rs_before = kube.list("apps/v1", "replicasets", namespace)[0]["metadata"]["resourceVersion"]
    try:
        operator.stop()
        operator.start()
        time.sleep(8)  # resume handlers, the table writer's first flush, a stats poll
    finally:
        watch.stop()
    after = {
        cm["metadata"]["name"]: cm["data"]
        for cm in kube.list("v1", "configmaps", namespace, f"{c.LABEL_ROUTING_TABLE}=true")
    }
    assert after == before
    assert watch.writes == 0 and watch.deletes == 0
    assert kube.list("apps/v1", "replicasets", namespace)[0]["metadata"]["resourceVersion"] == rs_before


def test_a_no_op_restart_with_many_adapters_writes_nothing_at_all(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """Counted from the apiserver's audit log: no status, no kopf bookkeeping, no table, no pool write."""
    audit = CLUSTER_DIR / "logs" / "audit.log"
    n = 600
    kube.create(pool_manifest("tiny", namespace, replicas=0, minReplicas=0))
    created = audit_mark(audit)
    with ThreadPoolExecutor(max_workers=8) as ex:
        list(ex.map(lambda i: kube.create(adapter_body(namespace, f"q-{i:04d}", "tiny")), range(n)))

    def ready() -> int:
        adapters = kube.list(c.API_VERSION, c.ADAPTER_PLURAL, namespace)
        return sum(1 for a in adapters if (a.get("status") or {}).get("phase") == "Ready")

    wait_until(
        "every adapter Ready and routed",
        lambda: len(routing_table(kube, namespace).adapters) == n and ready() == n,
        timeout=300,
        interval=1.0,
    )
    time.sleep(6)  # the last flush and pool status
    on_creation = operator_writes(audit_events(audit, created, namespace))
    status_writes = sum(v for k, v in on_creation.items() if k.endswith("loraadapters/status"))
    assert status_writes <= n, f"at most one status write per adapter on creation: {on_creation}"

    restarted = audit_mark(audit)
    events_before = operator.health()["adapterEvents"]
    operator.stop()
    operator.start()

    def seen() -> int:
        try:
            return int(operator.health()["adapterEvents"])
        except OSError:
            return -1  # busy resuming: a late answer is a missed sample

    wait_until("every adapter seen again", lambda: seen() >= n, timeout=300)
    assert events_before >= n
    time.sleep(8)  # resume handlers, the table writer's first flush, a stats poll
    assert operator_writes(audit_events(audit, restarted, namespace)) == {}
