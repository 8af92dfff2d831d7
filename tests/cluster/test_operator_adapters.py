"""LoraAdapter on the real control plane: resolution, status, the routing table, the unreachable hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import (
    PYTHON_EXE,
    ControlPlane,
    OperatorProcess,
    adapter_manifest,
    adapter_retries,
    condition,
    free_port,
    http_get,
    pool_manifest,
    routing_table,
    service_account_kubeconfig,
    start_process,
    wait_until,
)


def get_adapter(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    return kube.get(c.API_VERSION, c.ADAPTER_PLURAL, ns, name)


def no_pods_pool(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    # The table does not need ready pods; keep the fake GPUs for the pool tests.
    return pool_manifest(name, ns, replicas=0, minReplicas=0, **spec)


def test_adapters_appear_in_and_disappear_from_the_table(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.create(no_pods_pool("tiny", namespace, routing={"aliases": ["tiny-sdxl"]}))
    kube.create(adapter_manifest("pixel", namespace, aliases=["px"], scale=0.5))
    kube.create(
        adapter_manifest(
            "web",
            namespace,
            source={"type": "url", "url": "https://loras.example.com/web.safetensors", "sha256": "ab" * 32},
        )
    )
    kube.create(adapter_manifest("by-model", namespace, pool=None, baseModel="tiny"))

    table = wait_until(
        "3 adapters in the table",
        lambda: (t := routing_table(kube, namespace)) and len(t.adapters) == 3 and t,
        timeout=60,
    )
    assert table.resolve("px") == ("tiny", "pixel")
    assert table.resolve("tiny-sdxl") == ("tiny", None)
    assert table.adapters["web"].source.type == "url" and table.adapters["web"].revision == "ab" * 32
    assert table.adapters["by-model"].pool == "tiny"

    for name in ("pixel", "web", "by-model"):
        ad = wait_until(
            f"{name} Ready",
            lambda n=name: (
                (a := get_adapter(kube, namespace, n)) and (a.get("status") or {}).get("phase") == "Ready" and a
            ),
        )
        assert ad["status"]["pool"] == "tiny" and condition(ad, "Ready")["reason"] == "Routed"
        assert ad["status"]["observedGeneration"] == ad["metadata"]["generation"]
        assert "kopf" not in ad["status"]
    pool = wait_until(
        "pool counts adapters",
        lambda: (
            (p := kube.get(c.API_VERSION, c.POOL_PLURAL, namespace, "tiny"))
            and (p.get("status") or {}).get("adapters") == 3
            and p
        ),
    )
    assert pool["status"]["adapters"] == 3

    kube.delete(c.API_VERSION, c.ADAPTER_PLURAL, namespace, "pixel")
    table = wait_until("pixel gone", lambda: (t := routing_table(kube, namespace)) and "pixel" not in t.adapters and t)
    assert set(table.adapters) == {"web", "by-model"}

    # An edit reaches the table too (aliases, scale).
    kube.merge_patch(c.API_VERSION, c.ADAPTER_PLURAL, namespace, "web", {"spec": {"aliases": ["w"], "scale": 0.7}})
    wait_until(
        "edit routed",
        lambda: (
            (t := routing_table(kube, namespace))
            and t.adapters["web"].aliases == ("w",)
            and t.adapters["web"].scale == 0.7
        ),
    )


def test_unreachable_hub_is_a_condition_with_retry_not_a_crash(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(no_pods_pool("tiny", namespace))
    kube.create(adapter_manifest("hubby", namespace, source={"type": "hub", "repo": "org/some-lora"}))
    ad = wait_until(
        "HubUnreachable",
        lambda: (
            (a := get_adapter(kube, namespace, "hubby"))
            and condition(a, "Ready").get("reason") == "HubUnreachable"
            and a
        ),
        timeout=60,
    )
    assert ad["status"]["phase"] == "Pending"
    assert condition(ad, "Progressing")["status"] == "True"
    assert "hub" in condition(ad, "Ready")["message"]

    wait_until("retries with a delay (backoff)", lambda: adapter_retries(operator, namespace, "hubby") >= 2, timeout=60)
    # The retries write nothing on the adapter: no kopf progress annotations, no change to its status.
    ad = get_adapter(kube, namespace, "hubby") or {}
    assert not [k for k in ad["metadata"].get("annotations") or {} if k.startswith(c.KOPF_ANNOTATION_PREFIX)]
    assert operator.handle is not None and operator.handle.alive()
    table = wait_until("the namespace's table", lambda: routing_table(kube, namespace), timeout=30)
    assert "tiny" in table.pools and "hubby" not in table.adapters


def test_adapter_waits_for_its_pool_then_routes(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.create(adapter_manifest("early", namespace, pool="later"))
    wait_until(
        "PoolNotFound",
        lambda: condition(get_adapter(kube, namespace, "early"), "Ready").get("reason") == "PoolNotFound",
    )
    kube.create(no_pods_pool("later", namespace))
    # The new pool wakes adapters waiting for one: no need to wait out their backoff.
    wait_until(
        "Ready once the pool exists",
        lambda: get_adapter(kube, namespace, "early")["status"]["phase"] == "Ready",
        timeout=30,
    )
    # The table follows within the writer's debounce (the status may be patched first).
    wait_until("early routed", lambda: (t := routing_table(kube, namespace)) and "early" in t.adapters, timeout=10)


def test_base_model_mismatch_is_a_clear_failure(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.create(no_pods_pool("tiny", namespace))
    kube.create(adapter_manifest("wrong", namespace, baseModel="stabilityai/stable-diffusion-xl-base-1.0"))
    ad = wait_until(
        "BaseModelMismatch",
        lambda: (
            (a := get_adapter(kube, namespace, "wrong"))
            and condition(a, "Degraded").get("reason") == "BaseModelMismatch"
            and a
        ),
    )
    assert ad["status"]["phase"] == "Failed"
    assert "tiny" in condition(ad, "Degraded")["message"]


def test_a_sidecar_routes_from_the_operators_table(
    kube: Kube, operator: OperatorProcess, namespace: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """Operator -> ConfigMaps -> a real sidecar (gateway mode), authenticated as the pool's own ServiceAccount."""
    kube.create(no_pods_pool("tiny", namespace, routing={"aliases": ["tiny-sdxl"]}))
    kube.create(adapter_manifest("pixel", namespace, aliases=["px"]))
    wait_until(
        "the pool's inference ServiceAccount", lambda: kube.get("v1", "serviceaccounts", namespace, "tiny-inference")
    )
    kubeconfig = service_account_kubeconfig(
        control_plane.kubeconfig, namespace, "tiny-inference", tmp_path / "kubeconfig"
    )
    port = free_port()
    sidecar = start_process(
        [
            PYTHON_EXE,
            "-m",
            "inference_pod.router",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--table-configmaps",
            namespace,
        ],
        port,
        ready_path="/healthz",
        timeout=60,
        env={"KUBECONFIG": kubeconfig},
        log_dir=tmp_path,
    )
    try:

        def models() -> set[str]:
            # /healthz is up before the first table load; until then /v1/models answers 503 table_not_loaded.
            status, body = http_get(sidecar.url + "/v1/models")
            assert status == 200, f"/v1/models answered {status}"
            return {m["id"] for m in json.loads(body)["data"]}

        wait_until("the sidecar serves the operator's table", lambda: {"tiny", "tiny-sdxl", "pixel", "px"} <= models())
        kube.create(adapter_manifest("later", namespace))
        wait_until("a new adapter reaches the sidecar", lambda: "later" in models(), timeout=30)
        shard0 = kube.get("v1", "configmaps", namespace, "loraplex-routes-0")
        generation = json.loads(shard0["data"][c.TABLE_DATA_KEY])["generation"]
        wait_until(
            "the sidecar reports the table's generation",
            lambda: json.loads(http_get(sidecar.url + "/v1/stats")[1])["table"]["generation"] == generation,
        )
    finally:
        sidecar.terminate()
