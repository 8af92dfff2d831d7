"""End-to-end tests on the real node (tools/k8s/real-node.sh): real containers
from the locally built images, real kubelet, kube-proxy Services.

`./dev test` runs them in a pytest run of their own, after the other tiers
(`./dev test e2e` runs only them; LORAPLEX_E2E=0 leaves them out). With
LORAPLEX_E2E=1 and no real node up, the session brings up the control plane
and the real node (tools/k8s/cluster.sh up --real-node), imports the images
(tools/k8s/images.sh, cached layers: only the source layer is rebuilt) and
takes everything down at the end, also when a test fails. A real node that is
already up is used and left up; with LORAPLEX_E2E=1 this checkout's images are
imported into it first.

The cluster is the one named by LORAPLEX_CLUSTER_DIR (as cluster.sh), the
node's state dir LORAPLEX_REAL_NODE_DIR (as real-node.sh).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.support import (
    INFERENCE_IMAGE,
    NODE_DIR,
    NODE_NAME,
    OPERATOR_IMAGE,
    REAL_NODE_TOLERATION,
    ROOT,
    delete_namespace,
    helm,
    kubectl,
    new_namespace,
    real_node_up,
    split_ref,
)


def _run_tool(what: str, *cmd: str, timeout: float) -> None:
    t0 = time.monotonic()
    r = subprocess.run(["bash", *cmd], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        pytest.fail(f"{what} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}", pytrace=False)
    print(f"e2e set-up: {what} in {time.monotonic() - t0:.0f}s")


def _bring_up() -> None:
    """Control plane (if down) + real node + images imported into its containerd."""
    k8s = ROOT / "tools" / "k8s"
    r = subprocess.run(["bash", str(k8s / "host-deps.sh"), "--check"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"the real node's packages are missing: run tools/k8s/host-deps.sh as root\n{r.stderr}")
    _run_tool("build.sh --real-node", str(k8s / "build.sh"), "--real-node", timeout=5400)
    _run_tool("cluster.sh up --real-node", str(k8s / "cluster.sh"), "up", "--real-node", timeout=600)
    # Built already by ./dev test (cached layers); this run imports them into the node's containerd.
    _run_tool("images.sh (build + import)", str(k8s / "images.sh"), "--import", "operator", "inference", timeout=3600)


def _take_down(cluster_too: bool) -> None:
    k8s = ROOT / "tools" / "k8s"
    subprocess.run(["bash", str(k8s / "real-node.sh"), "down"], capture_output=True, timeout=600)
    if cluster_too:
        subprocess.run(["bash", str(k8s / "cluster.sh"), "down"], capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def real_node() -> Iterator[str]:
    started = cluster_too = False
    if not real_node_up():
        if os.environ.get("LORAPLEX_E2E") != "1":
            pytest.skip(
                "e2e: the real node is not up and LORAPLEX_E2E is not 1 "
                "(./dev test runs this tier with it; LORAPLEX_E2E=1 brings the node up here)"
            )
        status = subprocess.run(["bash", str(ROOT / "tools" / "k8s" / "cluster.sh"), "status"], capture_output=True)
        started, cluster_too = True, status.returncode != 0
        try:
            _bring_up()
        except BaseException:
            _take_down(cluster_too)
            raise
    elif os.environ.get("LORAPLEX_E2E") == "1":
        # A node that was up already: it still runs this checkout's images (an unchanged image is not re-sent).
        _run_tool(
            "images.sh (build + import)",
            str(ROOT / "tools/k8s/images.sh"),
            "--import",
            "operator",
            "inference",
            timeout=3600,
        )
    try:
        kubectl("wait", "--for=condition=Ready", f"node/{NODE_NAME}", "--timeout=120s")
        yield NODE_NAME
    finally:
        if started and not os.environ.get("LORAPLEX_KEEP_CLUSTER"):
            _take_down(cluster_too)


def _node_image(ref: str, target: str) -> str:
    sock = NODE_DIR / "containerd" / "containerd.sock"
    out = subprocess.run(
        ["ctr", "-a", str(sock), "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True
    ).stdout.split()
    if ref not in out:
        pytest.fail(f"{ref} is not in the real node's containerd: run tools/k8s/images.sh {target}")
    return ref


@pytest.fixture(scope="session")
def inference_image(real_node: str) -> str:
    return _node_image(INFERENCE_IMAGE, "inference")


@pytest.fixture(scope="session")
def operator_image(real_node: str) -> str:
    return _node_image(OPERATOR_IMAGE, "operator")


@pytest.fixture
def namespace(real_node: str) -> Iterator[str]:
    ns = new_namespace("e2e")
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="session")
def release(real_node: str, operator_image: str, inference_image: str) -> Iterator[tuple[str, str]]:
    """The chart installed with the local images, the operator pinned to the real node."""
    # helm installs a chart's CRDs only when they are missing and never upgrades them: a cluster that
    # outlived an earlier session would keep old schemas (and refuse new fields), so apply them as an upgrade does.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "charts" / "loraplex" / "crds"))
    ns = new_namespace("lpx-e2e-sys")
    name = "lpx"
    op_repo, op_tag = split_ref(operator_image)
    inf_repo, inf_tag = split_ref(inference_image)
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
