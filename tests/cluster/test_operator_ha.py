"""Several operator replicas: one leads (Lease), the other waits, and takes over when the leader dies."""

from __future__ import annotations

from pathlib import Path

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import (
    LEASE_NAME,
    SYSTEM_NS,
    OperatorProcess,
    adapter_manifest,
    pool_manifest,
    routing_table,
    wait_until,
)


def test_standby_takes_over_when_the_leader_dies(
    kube: Kube, operator: OperatorProcess, operator_kubeconfig: str, namespace: str, tmp_path: Path
) -> None:
    standby = OperatorProcess(operator_kubeconfig, tmp_path, identity="cluster-tests-standby")
    standby.start(lead=False)
    try:
        wait_until("a standby", lambda: standby.health().get("role") == "standby", timeout=30)
        kube.create(pool_manifest("tiny", namespace, replicas=0))
        kube.create(adapter_manifest("before", namespace))
        wait_until("routed by the leader", lambda: (t := routing_table(kube, namespace)) and "before" in t.adapters)
        assert standby.health()["role"] == "standby" and standby.health()["tableWrites"] == 0

        operator.kill()  # SIGKILL: no lease hand-over, the standby must wait the lease out
        lease = wait_until(
            "standby leads",
            lambda: (
                (lz := kube.get("coordination.k8s.io/v1", "leases", SYSTEM_NS, LEASE_NAME))
                and lz["spec"]["holderIdentity"] == "cluster-tests-standby"
                and lz
            ),
            timeout=60,
        )
        assert lease["spec"]["leaseTransitions"] >= 1
        wait_until("kopf running in the new leader", lambda: standby.health().get("kopf") == "running", 30)
        kube.create(adapter_manifest("after", namespace))
        wait_until(
            "routed by the new leader",
            lambda: (t := routing_table(kube, namespace)) and "after" in t.adapters,
            timeout=60,
        )
        wait_until(
            "status from the new leader",
            lambda: (
                ((kube.get(c.API_VERSION, c.ADAPTER_PLURAL, namespace, "after") or {}).get("status") or {}).get("phase")
                == "Ready"
            ),
        )
    finally:
        standby.stop()  # graceful: releases the lease at once
    operator.start()  # the session's operator leads again for the tests after this one
