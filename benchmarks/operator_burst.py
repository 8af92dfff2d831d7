"""Operator burst: N LoraAdapters created at once; how long until all are routed, in how many writes.

    python benchmarks/operator_burst.py [--adapters 2000] [--namespace NS] [--start-operator]

Needs a cluster marked for tests (KUBECONFIG with context `loraplex-test`,
e.g. `eval "$(tools/k8s/cluster.sh env)"` after `tools/k8s/cluster.sh up`)
with the CRDs applied, and an operator running against it (or
--start-operator to run one here, without leader election). It creates a
pool with no pods (the table does not need ready pods), waits for its table,
then creates N url-source adapters from 16 client threads and watches the
routing-table ConfigMaps: every ADDED/MODIFIED event is one write by the
operator. It prints the time until the merged table holds all N adapters,
the ConfigMap writes that took, and the time until every adapter's status
is Ready (kopf's per-object handlers, the slower path). A table, not a
timed assertion: the cluster test prints it too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loraplex.api.routing_table import ShardMerger  # noqa: E402
from loraplex_operator import constants as c  # noqa: E402
from loraplex_operator.clients.kube import Kube, KubeError, resource_path  # noqa: E402


@dataclass
class BurstResult:
    adapters: int
    create_s: float
    table_s: float
    ready_s: float | None
    writes: int
    deletes: int
    shards: int
    largest_shard_bytes: int

    def report(self) -> str:
        ready = f"{self.ready_s:7.1f} s" if self.ready_s is not None else "   (not measured / timed out)"
        rate = self.adapters / max(self.create_s, 1e-9)
        return "\n".join(
            [
                f"operator burst: {self.adapters} LoraAdapters created at once",
                f"  created by the client       {self.create_s:7.1f} s  ({rate:.0f}/s)",
                f"  all in the routing table    {self.table_s:7.1f} s  after the first create",
                f"  all adapters status Ready   {ready}",
                f"  ConfigMap writes            {self.writes:7d}     (deletes {self.deletes})",
                f"  shards                      {self.shards:7d}     largest {self.largest_shard_bytes:,} bytes",
            ]
        )


class ShardWatch:
    """Counts writes to a namespace's routing-table ConfigMaps and keeps their latest content."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.docs: dict[str, str] = {}
        self.writes = self.deletes = 0
        self.changed = threading.Condition()
        self._merger = ShardMerger()  # re-parses only changed shards: cheap at 30,000 adapters
        self._stop = threading.Event()
        initial = kube.request(
            "GET",
            resource_path("v1", "configmaps", namespace),
            query={"labelSelector": f"{c.LABEL_ROUTING_TABLE}=true"},
        )
        for cm in initial.get("items", []):
            self.docs[cm["metadata"]["name"]] = cm["data"][c.TABLE_DATA_KEY]
        self._rv = initial["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch
        from kubernetes.client import CoreV1Api

        core = CoreV1Api(self.kube.api)
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in w.stream(
                    core.list_namespaced_config_map,
                    self.namespace,
                    label_selector=f"{c.LABEL_ROUTING_TABLE}=true",
                    resource_version=self._rv,
                    timeout_seconds=30,
                    _request_timeout=40,
                ):
                    obj = ev["object"]
                    self._rv = obj.metadata.resource_version
                    with self.changed:
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self.writes += 1
                            self.docs[obj.metadata.name] = (obj.data or {}).get(c.TABLE_DATA_KEY, "{}")
                        elif ev["type"] == "DELETED":
                            self.deletes += 1
                            self.docs.pop(obj.metadata.name, None)
                        self.changed.notify_all()
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - a dropped watch is resumed from the last version
                time.sleep(0.2)

    def adapters(self) -> int:
        with self.changed:
            docs = list(self.docs.values())
        try:
            return len(self._merger.merge(docs).adapters) if docs else 0
        except ValueError:
            return 0  # a reader mid-update would keep its last good table; so do we

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.adapters() >= n:
                return True
            with self.changed:
                self.changed.wait(timeout=1.0)
        return self.adapters() >= n

    def stop(self) -> None:
        self._stop.set()


def adapter_body(namespace: str, name: str, pool: str) -> dict[str, Any]:
    sha = hashlib.sha256(name.encode()).hexdigest()
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.ADAPTER_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "pool": pool,
            "source": {"type": "url", "url": f"https://loras.example.com/{name}.safetensors", "sha256": sha},
        },
    }


def _ready_count(kube: Kube, namespace: str) -> int:
    items = kube.list(c.API_VERSION, c.ADAPTER_PLURAL, namespace)
    return sum(1 for a in items if (a.get("status") or {}).get("phase") == "Ready")


def run_burst(
    kube: Kube,
    namespace: str,
    n: int,
    pool: str = "burst",
    table_timeout: float = 600,
    ready_timeout: float = 600,
    wait_ready: bool = True,
) -> BurstResult:
    """Create the pool, then n adapters at once; measure. The namespace must exist."""
    kube.create(
        {
            "apiVersion": c.API_VERSION,
            "kind": c.POOL_KIND,
            "metadata": {"name": pool, "namespace": namespace},
            "spec": {"model": {"name": "tiny"}, "replicas": 0, "minReplicas": 0, "maxReplicas": 1, "gpu": {"count": 0}},
        }
    )
    deadline = time.monotonic() + 120
    while not kube.list("v1", "configmaps", namespace, f"{c.LABEL_ROUTING_TABLE}=true"):
        if time.monotonic() > deadline:
            raise TimeoutError("the operator wrote no routing table for the pool within 120 s (is it running?)")
        time.sleep(0.2)
    watch = ShardWatch(kube, namespace)
    names = [f"burst-{i:05d}" for i in range(n)]
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=16) as pool_exec:
            for _ in pool_exec.map(lambda name: kube.create(adapter_body(namespace, name, pool)), names):
                pass
        created = time.monotonic() - t0
        if not watch.wait_for(n, table_timeout):
            raise TimeoutError(f"only {watch.adapters()}/{n} adapters in the table after {table_timeout:.0f}s")
        in_table = time.monotonic() - t0
        ready_s = None
        if wait_ready:
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline:
                if _ready_count(kube, namespace) >= n:
                    ready_s = time.monotonic() - t0
                    break
                time.sleep(2)
    finally:
        watch.stop()
    sizes = [len(d.encode()) for d in watch.docs.values()]
    return BurstResult(n, created, in_table, ready_s, watch.writes, watch.deletes, len(sizes), max(sizes or [0]))


def egress_summary(log: Path) -> str:
    """One line: how many targets the benchmark's operator dialled, and any that were not local."""
    rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    refused = sorted({r[1] for r in rows if len(r) == 4 and r[3] == "refused"})
    return f"operator egress: {len(rows)} target(s) dialled, {len(refused)} refused as non-local {refused[:5]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", type=int, default=2000)
    p.add_argument("--namespace", help="existing namespace to use (default: a new one, deleted afterwards)")
    p.add_argument("--start-operator", action="store_true", help="run an operator here for the benchmark")
    p.add_argument("--no-ready", action="store_true", help="do not wait for every adapter's status")
    a = p.parse_args(argv)

    from loraplex_operator.clients.kube import load_configuration

    config_path = os.environ.get("KUBECONFIG", "")
    import yaml

    context = (yaml.safe_load(Path(config_path).read_text()) or {}).get("current-context") if config_path else None
    if context != "loraplex-test" and not os.environ.get("LORAPLEX_TEST_ANY_CLUSTER"):
        print(f"refusing: KUBECONFIG context {context!r} is not the test cluster 'loraplex-test'", file=sys.stderr)
        return 2
    kube = Kube(load_configuration(), workers=16)
    ns = a.namespace or f"bench-burst-{uuid.uuid4().hex[:5]}"
    own_ns = a.namespace is None
    proc = None
    egress_log: Path | None = None
    try:
        if own_ns:
            kube.request(
                "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
            )
        if a.start_operator:
            from tests.helpers.procs import PYTHON, free_port, start_process

            port = free_port()
            egress_log = Path(tempfile.mkdtemp(prefix="loraplex-burst-")) / "egress.log"
            # Pod IPs of the test cluster are fake: the guard refuses anything off this machine,
            # the hub client points at a closed local port, and every target is recorded.
            proc = start_process(
                [
                    PYTHON,
                    "-m",
                    "loraplex_operator",
                    "--no-leader-election",
                    "--namespace",
                    ns,
                    "--health-host",
                    "127.0.0.1",
                    "--health-port",
                    str(port),
                ],
                port,
                ready_path="/healthz",
                env={
                    "LORAPLEX_EGRESS": "local",
                    "LORAPLEX_EGRESS_LOG": str(egress_log),
                    "HF_ENDPOINT": "http://127.0.0.1:9",
                },
            )
        result = run_burst(kube, ns, a.adapters, wait_ready=not a.no_ready)
        print(result.report())
        print(json.dumps(result.__dict__))
        if egress_log is not None:
            print(egress_summary(egress_log))
    finally:
        if proc is not None:
            proc.terminate()
        if own_ns:
            with contextlib.suppress(KubeError):
                kube.delete("v1", "namespaces", None, ns)
        kube.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
