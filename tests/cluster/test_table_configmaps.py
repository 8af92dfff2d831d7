"""The routing table from ConfigMaps, through a real Kubernetes watch (real apiserver).

Uses the cluster fixtures of tests/cluster/conftest.py (`control_plane` for
the kubeconfig, `namespace` for a namespace of its own); no operator needed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from inference_pod.router.table_source import ConfigMapTableSource
from loraplex.api.names import TABLE_DATA_KEY
from tests.helpers.httpclient import get
from tests.helpers.procs import free_port, loopback_server_cmd, start_process

LABEL = {"loraplex.io/routing-table": "true"}


@pytest.fixture
def core(control_plane):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(config_file=control_plane.kubeconfig))


def shard(gen: int, pools: dict | None = None, adapters: dict | None = None) -> str:
    return json.dumps({"version": 1, "generation": gen, "pools": pools or {}, "adapters": adapters or {}})


def adapter(name: str) -> dict:
    return {name: {"pool": "tiny", "source": {"type": "path", "path": f"/a/{name}"}}}


POOLS = {"tiny": {"baseModel": "tiny", "endpoints": [{"name": "p0", "url": "http://127.0.0.1:1"}]}}


def put(
    core, ns: str, name: str, data: str | None, labels: dict | None = LABEL, annotations: dict | None = None
) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels, annotations=annotations),
        data={TABLE_DATA_KEY: data} if data is not None else {"other": "x"},
    )
    try:
        core.replace_namespaced_config_map(name, ns, body)
    except ApiException as e:
        if e.status != 404:
            raise
        core.create_namespaced_config_map(ns, body)


def eventually(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - keep polling until the deadline
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_watch_follows_shards_and_keeps_the_last_good_table(core, namespace: str) -> None:
    ns = namespace
    put(core, ns, "rt-pools", shard(1, pools=POOLS))
    put(core, ns, "rt-a", shard(1, adapters=adapter("a1")))
    put(core, ns, "unrelated", shard(9, adapters=adapter("nope")), labels={"app": "x"})
    src = ConfigMapTableSource(ns, api=core, debounce_s=0.05, watch_timeout_s=2)
    errors: list[str] = []
    src.add_error_listener(errors.append)
    src.start()
    try:
        eventually(lambda: src.table is not None and set(src.table.adapters) == {"a1"})
        put(core, ns, "rt-b", shard(2, adapters=adapter("b1")))  # a new shard
        eventually(lambda: set(src.table.adapters) == {"a1", "b1"} and src.table.generation == 2)
        put(core, ns, "rt-a", shard(3, adapters=adapter("a1") | adapter("a2")))  # a changed shard
        eventually(lambda: set(src.table.adapters) == {"a1", "a2", "b1"})
        put(core, ns, "rt-b", "{truncated")  # malformed: keep the last good table
        eventually(lambda: bool(errors) and "rt-b" in errors[-1])
        assert set(src.table.adapters) == {"a1", "a2", "b1"}
        core.delete_namespaced_config_map("rt-b", ns)  # gone: its adapters go with it
        eventually(lambda: set(src.table.adapters) == {"a1", "a2"})
        put(core, ns, "rt-a", shard(4, adapters=adapter("a1")), labels={"app": "x"})  # label removed
        eventually(lambda: set(src.table.adapters) == set())
        time.sleep(3)  # the 2 s watch ends server-side; the source resumes from its resourceVersion
        put(core, ns, "rt-c", shard(5, adapters=adapter("c1")))
        eventually(lambda: set(src.table.adapters) == {"c1"}, timeout=5)
    finally:
        src.stop()


def test_watch_refuses_an_unexplained_empty_table(core, namespace: str) -> None:
    ns = namespace
    put(core, ns, "rt-0", shard(1, pools=POOLS, adapters=adapter("a1")))
    src = ConfigMapTableSource(ns, api=core, debounce_s=0.05, watch_timeout_s=30)
    errors: list[str] = []
    src.add_error_listener(errors.append)
    src.start()
    try:
        eventually(lambda: src.table is not None and set(src.table.adapters) == {"a1"})
        core.delete_namespaced_config_map("rt-0", ns)  # every shard deleted by hand
        eventually(lambda: src.refused_empty == 1)
        assert set(src.table.adapters) == {"a1"} and "empty table" in errors[-1]
        put(core, ns, "rt-0", shard(2))  # a valid, empty, unmarked table written by hand
        eventually(lambda: src.refused_empty == 2)
        assert set(src.table.adapters) == {"a1"}
        put(core, ns, "rt-0", shard(3), annotations={"loraplex.io/table-empty": "true"})  # the operator's marker
        eventually(lambda: src.table.generation == 3 and not src.table.adapters and not src.table.pools)
    finally:
        src.stop()


def test_sidecar_routes_from_configmaps(core, namespace: str, control_plane, tmp_path: Path) -> None:
    ns = namespace
    put(core, ns, "rt-pools", shard(1, pools=POOLS))
    put(core, ns, "rt-a", shard(1, adapters=adapter("cm-lora")))
    port = free_port()
    sc = start_process(
        [*loopback_server_cmd("inference_pod.router", str(port)), "--table-configmaps", ns],
        port,
        timeout=60,
        env={"KUBECONFIG": control_plane.kubeconfig},
        log_dir=tmp_path,
    )
    try:

        def models() -> set[str]:
            return {m["id"] for m in get(sc.url + "/v1/models").json()["data"]}

        eventually(lambda: "cm-lora" in models())
        put(core, ns, "rt-a", shard(2, adapters=adapter("cm-lora") | adapter("cm-new")))
        eventually(lambda: "cm-new" in models(), timeout=5)
        assert get(sc.url + "/readyz").status == 200
        assert get(sc.url + "/v1/stats").json()["table"]["generation"] == 2
    finally:
        sc.terminate()
