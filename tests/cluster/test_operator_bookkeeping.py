"""The operator's bookkeeping (none on adapters) and its reactions on the real control plane (issue #10)."""

from __future__ import annotations

import json
import time
from typing import Any

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube
from tests.cluster.operator_support import (
    OperatorProcess,
    adapter_manifest,
    adapter_retries,
    condition,
    pool_manifest,
    routing_table,
    wait_until,
)


def get_adapter(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    return kube.get(c.API_VERSION, c.ADAPTER_PLURAL, ns, name)


def no_pods_pool(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return pool_manifest(name, ns, replicas=0, minReplicas=0, **spec)


def test_adapters_carry_no_kopf_bookkeeping_and_a_large_annotation_is_fine(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(no_pods_pool("tiny", namespace))
    big = adapter_manifest("big", namespace)
    big["metadata"]["annotations"] = {"example.com/notes": "x" * 200_000}
    kube.create(big)  # the apiserver accepts it (all annotations < 256 KiB)
    ad = wait_until(
        "big Ready",
        lambda: (a := get_adapter(kube, namespace, "big")) and a.get("status", {}).get("phase") == "Ready" and a,
        timeout=60,
    )
    # kopf has no change handler for adapters: no diff base, no progress, no marker on the object (the
    # annotations kopf would copy there could not fit: one more patch would pass the 256 KiB limit).
    assert set(ad["metadata"]["annotations"]) == {"example.com/notes"}
    # An edit of the spec is seen (its generation is not what the status observed), and the note is still there.
    kube.merge_patch(c.API_VERSION, c.ADAPTER_PLURAL, namespace, "big", {"spec": {"scale": 0.5}})
    wait_until(
        "the edit handled",
        lambda: (
            (a := get_adapter(kube, namespace, "big"))
            and a["status"]["observedGeneration"] == a["metadata"]["generation"] == 2
        ),
    )
    wait_until(
        "the new scale routed",
        lambda: (t := routing_table(kube, namespace)) and "big" in t.adapters and t.adapters["big"].scale == 0.5,
        timeout=30,
    )
    assert set(get_adapter(kube, namespace, "big")["metadata"]["annotations"]) == {"example.com/notes"}
    refused = [line for line in operator.log_tail(2000).splitlines() if namespace in line and "422" in line]
    assert not refused, refused[:3]


def test_a_new_pool_routes_and_readies_a_waiting_adapter_without_its_backoff(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(adapter_manifest("early", namespace, pool="later"))

    # After two retries the next one is 20 s away (5, 10, 20 s).
    wait_until("two retries", lambda: adapter_retries(operator, namespace, "early") >= 2, timeout=60)
    kube.create(no_pods_pool("later", namespace))
    start = time.monotonic()
    wait_until(
        "Ready soon after the pool appears",
        lambda: get_adapter(kube, namespace, "early")["status"]["phase"] == "Ready",
        timeout=40,
    )
    took = time.monotonic() - start
    assert took < 8, f"status said Ready {took:.1f} s after the pool appeared"
    wait_until("early routed", lambda: (t := routing_table(kube, namespace)) and "early" in t.adapters, timeout=10)


def test_a_failing_adapter_gets_one_warning_event(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.create(no_pods_pool("tiny", namespace))
    kube.create(adapter_manifest("wrong", namespace, baseModel="stabilityai/stable-diffusion-xl-base-1.0"))

    def events() -> list[dict[str, Any]]:
        return [e for e in kube.list("v1", "events", namespace) if e["involvedObject"].get("name") == "wrong"]

    found = wait_until("a Warning event about the adapter", events, timeout=60)
    assert [(e["type"], e["reason"], e["involvedObject"]["kind"]) for e in found] == [
        ("Warning", "BaseModelMismatch", c.ADAPTER_KIND)
    ]
    assert "tiny" in found[0]["message"]
    # Seen again (its status reset by hand: reconciled afresh): still one Event for that failure.
    kube.merge_patch(c.API_VERSION, c.ADAPTER_PLURAL, namespace, "wrong", {"status": None}, "status")
    wait_until(
        "Failed again", lambda: condition(get_adapter(kube, namespace, "wrong"), "Degraded").get("status") == "True"
    )
    time.sleep(2)
    assert len(events()) == 1


def _shards(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return [cm for cm in kube.list("v1", "configmaps", ns) if cm["metadata"]["name"].startswith("loraplex-routes-")]


def test_routing_table_shards_deleted_emptied_or_unlabelled_by_hand_are_restored_at_once(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(no_pods_pool("tiny", namespace))
    kube.create(adapter_manifest("pixel", namespace))
    wait_until("pixel routed", lambda: (t := routing_table(kube, namespace)) and "pixel" in t.adapters, timeout=60)
    time.sleep(1.5)  # let the writer settle (its own writes' events need no flush)

    def restored() -> bool:
        t = routing_table(kube, namespace)
        return bool(t and "pixel" in t.adapters and "tiny" in t.pools)

    # 1. Every shard deleted by hand.
    for cm in _shards(kube, namespace):
        kube.delete("v1", "configmaps", namespace, cm["metadata"]["name"])
    start = time.monotonic()
    wait_until("shards re-created", restored, timeout=30)
    assert time.monotonic() - start < 8, "the table was restored only by the periodic resync"

    # 2. A valid but empty table written by hand.
    (shard0,) = _shards(kube, namespace)
    name = shard0["metadata"]["name"]
    empty = json.dumps({"version": 1, "generation": 1, "pools": {}, "adapters": {}})
    kube.merge_patch("v1", "configmaps", namespace, name, {"data": {c.TABLE_DATA_KEY: empty}})
    start = time.monotonic()
    wait_until("shard rewritten", restored, timeout=30)
    assert time.monotonic() - start < 8

    # 3. The routing-table label removed.
    kube.merge_patch("v1", "configmaps", namespace, name, {"metadata": {"labels": {c.LABEL_ROUTING_TABLE: None}}})
    start = time.monotonic()
    wait_until("label restored", restored, timeout=30)
    assert time.monotonic() - start < 8


def test_an_adapter_that_loses_an_alias_is_ready_and_routed_by_its_own_name(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(no_pods_pool("tiny", namespace))
    kube.create(adapter_manifest("alpha", namespace, aliases=["shared"]))
    kube.create(adapter_manifest("beta", namespace, aliases=["shared", "b"]))
    table = wait_until(
        "both routed", lambda: (t := routing_table(kube, namespace)) and {"alpha", "beta"} <= set(t.adapters) and t
    )
    assert table.resolve("shared") == ("tiny", "alpha") and table.resolve("beta") == ("tiny", "beta")
    assert table.resolve("b") == ("tiny", "beta")
    # The status says the same: beta is Ready (routed), and a separate condition names the alias it lost.
    beta = wait_until(
        "beta's AliasConflict condition",
        lambda: (
            (a := get_adapter(kube, namespace, "beta")) and condition(a, "AliasConflict").get("status") == "True" and a
        ),
    )
    assert beta["status"]["phase"] == "Ready" and condition(beta, "Ready")["status"] == "True"
    assert "'shared'" in condition(beta, "AliasConflict")["message"]
    alpha = get_adapter(kube, namespace, "alpha")
    assert alpha["status"]["phase"] == "Ready" and not condition(alpha, "AliasConflict")


def test_url_and_path_sources_are_checked_against_the_pools_rules(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.create(no_pods_pool("tiny", namespace))
    sha = "ab" * 32
    bad = {
        "meta": ({"type": "url", "url": "https://169.254.169.254/latest/x.safetensors", "sha256": sha}, "url"),
        "loop": ({"type": "url", "url": "https://127.0.0.1:6443/x.safetensors", "sha256": sha}, "url"),
        "apiserver": ({"type": "url", "url": "https://kubernetes.default.svc/x.safetensors", "sha256": sha}, "url"),
        "relative": ({"type": "path", "path": "loras/x.safetensors"}, "path"),
        "escape": ({"type": "path", "path": "/models/loras/../../etc/x.safetensors"}, "path"),
    }
    for name, (source, _) in bad.items():
        kube.create(adapter_manifest(name, namespace, source=source))
    kube.create(adapter_manifest("fine", namespace))
    for name, (_, field) in bad.items():
        ad = wait_until(
            f"{name} refused",
            lambda n=name: (
                (a := get_adapter(kube, namespace, n)) and (a.get("status") or {}).get("phase") == "Failed" and a
            ),
        )
        degraded = condition(ad, "Degraded")
        assert degraded["reason"] == "SourceNotAllowed" and f"spec.source.{field}" in degraded["message"], degraded
    wait_until("fine routed", lambda: (t := routing_table(kube, namespace)) and "fine" in t.adapters)
    assert set(routing_table(kube, namespace).adapters) == {"fine"}
    # The pool allows private URLs: those adapters are admitted (the pool's change wakes them at once).
    kube.merge_patch(
        c.API_VERSION, c.POOL_PLURAL, namespace, "tiny", {"spec": {"adapterSources": {"allowPrivateUrls": True}}}
    )
    wait_until(
        "meta admitted",
        lambda: (get_adapter(kube, namespace, "meta") or {}).get("status", {}).get("phase") == "Ready",
        timeout=20,
    )
    wait_until("meta routed", lambda: "meta" in routing_table(kube, namespace).adapters)
    assert "relative" not in routing_table(kube, namespace).adapters
