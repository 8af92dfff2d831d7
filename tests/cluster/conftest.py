"""The real control plane for cluster tests, the chart installed, the operator running.

Session fixtures, in order:
- `control_plane` (autouse): a Kubernetes API to test against.
  * KUBECONFIG set: used as is if its current context is marked for tests
    (named `loraplex-test`, or LORAPLEX_TEST_ANY_CLUSTER=1); any other context
    is refused (error, not skip: never run tests against a real cluster by accident).
  * otherwise: tools/k8s/cluster.sh starts the project's control plane
    (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with
    fake GPU nodes), building the binaries first if needed. Set
    LORAPLEX_BUILD_K8S=0 to skip these tests instead of building (long).
    A cluster this session started is stopped at the end unless
    LORAPLEX_KEEP_CLUSTER=1.
- `chart`: CRDs applied from crds/, then `helm install` of charts/loraplex
  into loraplex-system (cluster-wide RBAC).
- `operator`: `python -m loraplex_operator` as a real process, authenticated
  as the chart's ServiceAccount (a token from the TokenRequest API), so every
  test also proves the chart's RBAC is enough.
Each test gets a namespace of its own (`namespace`).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from loraplex_operator.clients.kube import Kube, load_configuration
from tests.cluster.operator_support import (
    CLUSTER_DIR,
    OPERATOR_SA,
    RELEASE,
    ROOT,
    SYSTEM_NS,
    TEST_CONTEXT,
    ControlPlane,
    OperatorProcess,
    Release,
    current_context,
    dialled_targets,
    helm,
    kubectl,
    route_is_local,
    service_account_kubeconfig,
    wait_until,
)
from tests.helpers.procs import free_port


@pytest.fixture(scope="session", autouse=True)
def control_plane() -> Iterator[ControlPlane]:
    env_config = os.environ.get("KUBECONFIG")
    started = False
    if env_config:
        context = current_context(env_config)
        if context != TEST_CONTEXT and not os.environ.get("LORAPLEX_TEST_ANY_CLUSTER"):
            pytest.fail(
                f"refusing to run cluster tests against context {context!r} of KUBECONFIG={env_config}: "
                f"only a context named {TEST_CONTEXT!r} is marked for tests "
                "(or set LORAPLEX_TEST_ANY_CLUSTER=1 for a disposable cluster)",
                pytrace=False,
            )
        kubeconfig = env_config
    else:
        script = ROOT / "tools" / "k8s" / "cluster.sh"
        built = (
            subprocess.run(
                ["bash", str(ROOT / "tools" / "k8s" / "build.sh"), "--check"], capture_output=True
            ).returncode
            == 0
        )
        if not built and os.environ.get("LORAPLEX_BUILD_K8S") == "0":
            pytest.skip(
                "the Kubernetes binaries are not built and LORAPLEX_BUILD_K8S=0 "
                "(run tools/k8s/build.sh, or unset LORAPLEX_BUILD_K8S to build them here)"
            )
        kubeconfig = str(CLUSTER_DIR / "kubeconfig")
        was_up = subprocess.run(["bash", str(script), "status"], capture_output=True).returncode == 0
        if not was_up:
            # `up` builds what is missing first (a long first time), then starts in ~10-30 s.
            out = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=7200)
            if out.returncode != 0:
                pytest.fail(f"tools/k8s/cluster.sh up failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}", pytrace=False)
            started = True
        os.environ["KUBECONFIG"] = kubeconfig
    cp = ControlPlane(kubeconfig, started)

    cp.kube = Kube(load_configuration(), workers=16)
    try:
        yield cp
    finally:
        cp.kube.close()
        if started and not os.environ.get("LORAPLEX_KEEP_CLUSTER"):
            subprocess.run(["bash", str(ROOT / "tools" / "k8s" / "cluster.sh"), "down"], capture_output=True)
            os.environ.pop("KUBECONFIG", None)


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    return control_plane.kube


# -- CRDs and the chart -----------------------------------------------------------


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    for name in ("basemodelpools.loraplex.io", "loraadapters.loraplex.io"):
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


@pytest.fixture(scope="session")
def chart(crds: None) -> Iterator[Release]:
    # operator.replicas=0: the chart's Deployment, RBAC and ServiceAccount, but the operator under
    # test is this checkout's, run as that ServiceAccount (on a real cluster, a released image
    # would otherwise compete for the Lease).
    helm(
        "upgrade",
        "--install",
        RELEASE,
        str(ROOT / "charts" / "loraplex"),
        "--namespace",
        SYSTEM_NS,
        "--create-namespace",
        "--set",
        "operator.replicas=0",
        "--wait=false",
    )
    yield Release(RELEASE, SYSTEM_NS, OPERATOR_SA)


# -- the operator -------------------------------------------------------------------


@pytest.fixture(scope="session")
def operator_kubeconfig(chart: Release, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return service_account_kubeconfig(control_plane.kubeconfig, SYSTEM_NS, OPERATOR_SA, path)


@pytest.fixture(scope="session")
def operator(operator_kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator-logs"), stats_port=free_port())
    op.start()
    yield op
    op.stop()
    print(f"\n--- operator log tail ---\n{op.log_tail(40)}")
    # Over the whole session (the 2,000-adapter burst included): every address the operator
    # was allowed to dial is one the kernel keeps on this machine.
    leaving = sorted({h for h, v in dialled_targets(op.egress_log) if v == "allowed" and not route_is_local(h)})
    assert not leaving, f"the operator dialled addresses that leave this machine: {leaving}"


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    short = request.node.name.split("[")[0].removeprefix("test_").replace("_", "-")[:30].strip("-")
    name = f"t-{short}-{uuid.uuid4().hex[:5]}"
    kube.request(
        "POST",
        "/api/v1/namespaces",
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"loraplex.io/test": "1"}}},
    )
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_until("default ServiceAccount", lambda: kube.get("v1", "serviceaccounts", name, "default"), 30)
    yield name
    kube.delete("v1", "namespaces", None, name)
