"""End-to-end tests on the real node (tools/k8s/real-node.sh): real containers
from the locally built images, real kubelet, kube-proxy Services.

Not part of ./dev test yet. Run them with the cluster and the real node up:

    tools/k8s/cluster.sh up --real-node && tools/k8s/images.sh inference
    LORAPLEX_E2E=1 pytest -m e2e tests/e2e

The cluster is the one named by LORAPLEX_CLUSTER_DIR (as cluster.sh), the
node's state dir LORAPLEX_REAL_NODE_DIR (as real-node.sh).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def real_node() -> str:
    if not real_node_up():
        if os.environ.get("LORAPLEX_E2E") == "1":
            pytest.fail(
                f"LORAPLEX_E2E=1 but the real node is not up (state {NODE_DIR}): "
                "run tools/k8s/cluster.sh up --real-node"
            )
        pytest.skip("e2e: the real node is not up (tools/k8s/cluster.sh up --real-node) and LORAPLEX_E2E is not 1")
    kubectl("wait", "--for=condition=Ready", f"node/{NODE_NAME}", "--timeout=60s")
    return NODE_NAME


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
    ns = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", ns)
    # Pods are refused until the namespace's default ServiceAccount exists.
    deadline = time.monotonic() + 60
    while kubectl("get", "serviceaccount", "default", "-n", ns, "-o", "name", check=False).strip() == "":
        assert time.monotonic() < deadline, f"no default ServiceAccount in {ns} after 60s"
        time.sleep(0.5)
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false", check=False)
