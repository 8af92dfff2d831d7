"""Helpers for the operator's cluster tests: kubectl/helm, waiting, manifests, the operator process.

Imported by tests/cluster/conftest.py (fixtures) and by the tests themselves.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, KubeError
from tests.helpers.local_routes import route_is_local  # noqa: F401 - re-exported for the cluster tests
from tests.helpers.procs import PYTHON, ProcHandle, free_port, http_get, start_process

ROOT = Path(__file__).resolve().parents[2]
PYTHON_EXE = PYTHON
K8S_CACHE = Path(os.environ.get("LORAPLEX_K8S_CACHE", Path.home() / ".cache" / "loraplex" / "k8s"))
BIN = K8S_CACHE / "bin"
CLUSTER_DIR = Path(os.environ.get("LORAPLEX_CLUSTER_DIR", Path.home() / ".cache" / "loraplex" / "cluster"))
TEST_CONTEXT = "loraplex-test"
SYSTEM_NS = "loraplex-system"
RELEASE = "loraplex"
OPERATOR_SA = f"{RELEASE}-operator"  # chart: <fullname>-operator, fullname == release here
LEASE_NAME = f"{RELEASE}-operator"

# -- small helpers --------------------------------------------------------------


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def kubectl(
    *args: str, check: bool = True, input: str | None = None, timeout: float = 120, kubeconfig: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    out = subprocess.run(
        [tool("kubectl"), *args], capture_output=True, text=True, input=input, timeout=timeout, env=env
    )
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25) -> Any:
    """Poll `fn` until it returns something truthy; fail with `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (KubeError, AssertionError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
        interval = min(interval * 1.3, 2.0)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def current_context(kubeconfig: str) -> str:
    doc = yaml.safe_load(Path(kubeconfig).read_text()) or {}
    return str(doc.get("current-context") or "")


# -- the control plane ----------------------------------------------------------


@dataclass
class ControlPlane:
    kubeconfig: str
    started_here: bool
    kube: Kube = field(repr=False, default=None)  # type: ignore[assignment]


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str


def service_account_kubeconfig(admin_kubeconfig: str, namespace: str, sa: str, path: Path) -> str:
    """A kubeconfig that authenticates as a ServiceAccount (bound token from the TokenRequest API)."""
    token = kubectl("-n", namespace, "create", "token", sa, "--duration=3h").stdout.strip()
    raw = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json", kubeconfig=admin_kubeconfig).stdout)
    cluster = raw["clusters"][0]["cluster"]
    if "certificate-authority" in cluster and "certificate-authority-data" not in cluster:
        ca = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": TEST_CONTEXT,
        "clusters": [{"name": TEST_CONTEXT, "cluster": cluster}],
        "users": [{"name": f"{namespace}:{sa}", "user": {"token": token}}],
        "contexts": [{"name": TEST_CONTEXT, "context": {"cluster": TEST_CONTEXT, "user": f"{namespace}:{sa}"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return str(path)


# -- the operator -------------------------------------------------------------------


class OperatorProcess:
    """`python -m loraplex_operator` run as the chart's ServiceAccount; restartable."""

    def __init__(
        self, kubeconfig: str, log_dir: Path, identity: str = "cluster-tests", stats_port: int | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        # The port the autoscaler polls pods' /v1/stats on; tests serve stats for hostNetwork fake pods there.
        self.stats_port = stats_port
        self.log_dir = log_dir
        self.identity = identity
        self.handle: ProcHandle | None = None
        self.starts = 0
        self.egress_log = log_dir / "egress.log"

    def start(self, lead: bool = True) -> None:
        """Start; with `lead`, wait until it holds the lease and kopf runs (else: until it is up)."""
        port = free_port()
        cmd = [
            PYTHON,
            "-m",
            "loraplex_operator",
            "--health-host",
            "127.0.0.1",
            "--health-port",
            str(port),
            "--lease-namespace",
            SYSTEM_NS,
            "--lease-name",
            LEASE_NAME,
            # A fixed identity: a restarted process takes its lease back at once, like a restarted container.
            "--identity",
            self.identity,
            "--resync-seconds",
            "30",
            *(["--stats-port", str(self.stats_port)] if self.stats_port else []),
        ]
        env = {
            "KUBECONFIG": self.kubeconfig,
            "HF_ENDPOINT": "http://127.0.0.1:9",
            "LORAPLEX_LOG_LEVEL": "INFO",
            # Every address the operator dials is recorded (loraplex/egress.py); tests check them.
            "LORAPLEX_EGRESS_LOG": str(self.egress_log),
        }
        self.handle = start_process(cmd, port, ready_path="/healthz", timeout=60, env=env, log_dir=self.log_dir)
        self.starts += 1
        if lead:
            wait_until("the operator to lead and run kopf", self._running, timeout=60)

    def _running(self) -> bool:
        assert self.handle is not None
        if not self.handle.alive():
            raise RuntimeError(f"operator exited:\n{self.handle.log_tail(60)}")
        status, body = http_get(self.handle.url + "/healthz")
        return status == 200 and json.loads(body).get("kopf") == "running"

    def health(self) -> dict[str, Any]:
        assert self.handle is not None
        return json.loads(http_get(self.handle.url + "/healthz")[1])

    def kill(self) -> None:
        if self.handle is not None:
            self.handle.kill()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.terminate(timeout=15)

    def log_tail(self, lines: int = 80) -> str:
        return self.handle.log_tail(lines) if self.handle else ""


def adapter_retries(operator: OperatorProcess, namespace: str, name: str) -> int:
    """The highest retry the operator's log announced for an adapter (AdapterQueue: "retry N in S s"), or 0."""
    pattern = re.compile(rf"adapter {re.escape(namespace)}/{re.escape(name)} not ready \(.*\); retry (\d+) in ")
    found = [int(m[1]) for line in operator.log_tail(5000).splitlines() if (m := pattern.search(line))]
    return max(found, default=0)


# -- traffic stays on the machine -------------------------------------------------------


def dialled_targets(egress_log: Path) -> list[tuple[str, str]]:
    """(host, verdict) for every target the guard recorded."""
    if not egress_log.exists():
        return []
    rows = [line.split() for line in egress_log.read_text().splitlines()]
    return [(r[1], r[3]) for r in rows if len(r) == 4]


# -- objects ---------------------------------------------------------------------------


def pool_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"name": "tiny", "dtype": "float32"},
        "replicas": 1,
        "minReplicas": 0,
        "maxReplicas": 3,
        "gpu": {"count": 1},
        "resources": {"cpu": "1", "memory": "1Gi"},
    }
    base.update(spec)
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.POOL_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": base,
    }


def adapter_manifest(name: str, namespace: str, pool: str | None = "tiny", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": {"type": "path", "path": f"/models/loras/{name}.safetensors"}}
    if pool:
        body["pool"] = pool
    body.update(spec)
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.ADAPTER_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def routing_table(kube: Kube, namespace: str) -> Any:
    """The namespace's table as the sidecars see it (shards merged), or None when there is none."""
    from loraplex.api.routing_table import merge_shards

    cms = kube.list("v1", "configmaps", namespace, f"{c.LABEL_ROUTING_TABLE}=true")
    if not cms:
        return None
    return merge_shards([cm["data"][c.TABLE_DATA_KEY] for cm in cms])


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}
