"""Nothing a cluster test starts sends traffic off this machine.

kwok's fake pods get IPs that nothing here owns, and the operator's autoscaler
dials every ready pod's sidecar. tools/k8s/cluster.sh routes the pod and
Service ranges to `unreachable`, and the egress guard (LORAPLEX_EGRESS=local,
set for every process the tests start) refuses non-local targets before a
socket opens. This test watches a real poll cycle: it fails if the operator
did not dial the pods at all (nothing to check), if it was allowed to dial a
non-local address, or if the kernel would route any pod or Service IP out of
a real interface.
"""

from __future__ import annotations

import os

import pytest

from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import (
    OperatorProcess,
    dialled_targets,
    pool_manifest,
    route_is_local,
    wait_until,
)


def _ready_pod_ips(kube: Kube, namespace: str) -> list[str]:
    pods = kube.list("v1", "pods", namespace)
    return sorted({p["status"]["podIP"] for p in pods if (p.get("status") or {}).get("podIP")})


def test_operator_polls_fake_pods_without_leaving_the_machine(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    if os.environ.get("LORAPLEX_TEST_ANY_CLUSTER"):
        pytest.skip("a cluster that is not the project's own: its pod IPs may be real and routed")
    kube.create(
        pool_manifest(
            "local", namespace, replicas=2, minReplicas=2, maxReplicas=2, autoscaling={"pollIntervalSeconds": 5}
        )
    )
    pod_ips = wait_until(
        "two pool pods with IPs", lambda: (ips := _ready_pod_ips(kube, namespace)) and len(ips) == 2 and ips, timeout=60
    )
    # The autoscaler must actually have tried them, or this test proves nothing.
    wait_until(
        "the operator to dial the pods' sidecars",
        lambda: set(pod_ips) <= {h for h, _ in dialled_targets(operator.egress_log)},
        timeout=45,
    )

    dialled = dialled_targets(operator.egress_log)
    allowed_remote = [(h, v) for h, v in dialled if v == "allowed" and not route_is_local(h)]
    assert not allowed_remote, f"the operator was allowed to dial non-local addresses: {allowed_remote}"
    assert all(v == "refused" for h, v in dialled if h in pod_ips), dialled

    service = kube.get("v1", "services", namespace, "local")
    cluster_ips = [ip for ip in (service["spec"].get("clusterIPs") or []) if ip != "None"]
    assert cluster_ips, service["spec"]
    leaving = [ip for ip in pod_ips + cluster_ips if not route_is_local(ip)]
    assert not leaving, f"the kernel would route these out of the machine: {leaving}"
