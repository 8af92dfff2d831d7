"""Controllers and the table writer against an in-memory Kubernetes (no cluster)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from huggingface_hub import ModelInfo

from loraplex.api.routing_table import merge_shards
from loraplex_operator import constants as c
from loraplex_operator.clients.hub import HubError
from loraplex_operator.clients.kube import KubeError
from loraplex_operator.controllers.adapter_controller import AdapterController, Retry
from loraplex_operator.controllers.autoscaler import Autoscaler
from loraplex_operator.controllers.pool_controller import PoolController
from loraplex_operator.controllers.table_writer import TableWriter
from loraplex_operator.logic.resolution import PoolInfo
from loraplex_operator.logic.routes import build_table

_PLURAL = {
    "Deployment": "deployments",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Event": "events",
}


class FakeKube:
    """Just enough of kube.Kube: objects as dicts, label selectors of the form k=v or k."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.rv = 0

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*args, **kwargs)

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        self.objects[(plural, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        return obj

    def get(self, api_version: str, plural: str, namespace: str | None, name: str, subresource: Any = None) -> Any:
        obj = self.objects.get((plural, namespace or "", name))
        return copy.deepcopy(obj) if obj else None

    def get_manifest(self, manifest: dict[str, Any]) -> Any:
        meta = manifest["metadata"]
        return self.get(manifest["apiVersion"], _PLURAL[manifest["kind"]], meta.get("namespace"), meta["name"])

    def list(
        self,
        api_version: str,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        from_cache: bool = False,
    ) -> list[dict[str, Any]]:
        out = []
        for (p, ns, _), obj in sorted(self.objects.items()):
            if p != plural or (namespace and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            ok = True
            for term in (label_selector or "").split(","):
                if not term:
                    continue
                k, _, v = term.partition("=")
                ok &= (k in labels) if not _ else labels.get(k) == v
            if ok:
                out.append(copy.deepcopy(obj))
        return out

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", manifest["kind"]))
        return self.put(_PLURAL[manifest["kind"]], manifest)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", manifest["kind"]))
        meta = manifest["metadata"]
        if (_PLURAL[manifest["kind"]], meta.get("namespace", ""), meta["name"]) in self.objects:
            raise KubeError(409, "AlreadyExists", meta["name"])
        return self.put(_PLURAL[manifest["kind"]], manifest)

    def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> None:
        self.calls.append(("delete", plural))
        self.objects.pop((plural, namespace or "", name), None)

    def merge_patch(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: dict,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("patch", f"{plural}/{subresource or ''}"))
        obj = self.objects.get((plural, namespace or "", name))
        if obj is None:
            raise KubeError(404, "NotFound", name)
        _merge(obj, patch)
        return copy.deepcopy(obj)


def _merge(dst: dict, patch: dict) -> None:
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        elif v is None:
            dst.pop(k, None)
        else:
            dst[k] = copy.deepcopy(v)


def pool_obj(name: str = "sdxl", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.POOL_KIND,
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {"model": {"name": "org/sdxl"}, **spec},
    }


def adapter_obj(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("pool", "sdxl")
    spec.setdefault("source", {"type": "path", "path": f"/models/loras/{name}.safetensors"})
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.ADAPTER_KIND,
        "metadata": {"name": name, "namespace": "ns", "generation": 1},
        "spec": spec,
    }


def ready_pod(name: str, ip: str, pool: str = "sdxl") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {
                c.LABEL_POOL: pool,
                c.LABEL_COMPONENT: "inference",
                c.LABEL_STATS: "true",
                "app.kubernetes.io/name": "loraplex-inference",
                "app.kubernetes.io/instance": pool,
            },
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def table_of(kube: FakeKube) -> Any:
    cms = kube.list("v1", "configmaps", "ns", f"{c.LABEL_ROUTING_TABLE}=true")
    return merge_shards([cm["data"][c.TABLE_DATA_KEY] for cm in cms])


def fast_writer(kube: FakeKube) -> TableWriter:
    return TableWriter(kube, debounce_s=0.05, max_delay_s=0.3, min_interval_s=0.05)  # type: ignore[arg-type]


async def test_a_burst_is_coalesced_into_few_writes_and_nothing_is_rewritten() -> None:
    kube = FakeKube()
    writer = fast_writer(kube)
    kube.put("basemodelpools", pool_obj())
    kube.put("pods", ready_pod("sdxl-1", "10.0.0.1"))
    for i in range(300):
        kube.put("loraadapters", adapter_obj(f"a{i:03d}"))
        writer.mark("ns")
        if i % 50 == 0:
            await asyncio.sleep(0.01)
    await writer.idle()
    table = table_of(kube)
    assert len(table.adapters) == 300
    assert [e.url for e in table.pools["sdxl"].endpoints] == ["http://10.0.0.1:8080"]
    assert writer.stats.writes <= 3, writer.stats
    writes = writer.stats.writes
    for _ in range(5):  # duplicate events, restarts: same bytes, no write
        writer.mark("ns")
        await writer.idle()
    assert writer.stats.writes == writes
    assert kube.get(c.API_VERSION, c.POOL_PLURAL, "ns", "sdxl")["status"]["adapters"] == 300


async def test_deletions_reach_the_table_and_no_pool_means_an_explicitly_empty_table() -> None:
    kube = FakeKube()
    writer = fast_writer(kube)
    kube.put("basemodelpools", pool_obj())
    for name in ("a", "b"):
        kube.put("loraadapters", adapter_obj(name))
    writer.mark("ns")
    await writer.idle()
    assert set(table_of(kube).adapters) == {"a", "b"}
    kube.delete(c.API_VERSION, "loraadapters", "ns", "a")
    writer.mark("ns")
    await writer.idle()
    assert set(table_of(kube).adapters) == {"b"}
    kube.delete(c.API_VERSION, "basemodelpools", "ns", "sdxl")
    writer.mark("ns")
    await writer.idle()
    # One empty shard, marked so that sidecars accept it (they refuse an unexplained empty table).
    (cm,) = kube.list("v1", "configmaps", "ns")
    assert cm["metadata"]["annotations"][c.ANNOTATION_TABLE_EMPTY] == "true"
    assert cm["metadata"]["ownerReferences"] == []
    empty = table_of(kube)
    assert not empty.pools and not empty.adapters
    before = list(kube.calls)
    writer.mark("ns")  # e.g. the periodic resync: nothing to do
    await writer.idle()
    assert ("apply", "ConfigMap") not in kube.calls[len(before) :]
    # A new pool: a real table again, the marker gone.
    kube.put("basemodelpools", pool_obj())
    writer.mark("ns")
    await writer.idle()
    cms = kube.list("v1", "configmaps", "ns")
    assert set(table_of(kube).adapters) == {"b"}
    assert not any(c.ANNOTATION_TABLE_EMPTY in x["metadata"].get("annotations", {}) for x in cms)


async def test_a_table_collected_with_its_last_pool_becomes_an_explicitly_empty_one() -> None:
    kube = FakeKube()
    writer = fast_writer(kube)
    kube.put("basemodelpools", pool_obj())
    writer.mark("ns")
    await writer.idle()
    (cm,) = kube.list("v1", "configmaps", "ns")
    # The garbage collector deletes the pool and its shards before the writer's next flush.
    kube.delete(c.API_VERSION, "basemodelpools", "ns", "sdxl")
    kube.delete("v1", "configmaps", "ns", cm["metadata"]["name"])
    writer.table_event("ns", cm["metadata"]["name"], True, None)
    await writer.idle()
    (marker,) = kube.list("v1", "configmaps", "ns")
    assert marker["metadata"]["annotations"][c.ANNOTATION_TABLE_EMPTY] == "true"


async def test_writer_restores_shards_changed_by_anyone_else_but_ignores_its_own_writes() -> None:
    kube = FakeKube()
    writer = fast_writer(kube)
    kube.put("basemodelpools", pool_obj())
    kube.put("loraadapters", adapter_obj("a"))
    writer.mark("ns")
    await writer.idle()
    (cm,) = kube.list("v1", "configmaps", "ns")
    name, data = cm["metadata"]["name"], cm["data"][c.TABLE_DATA_KEY]
    assert not writer.table_event("ns", name, False, data)  # our own write's watch event
    kube.delete("v1", "configmaps", "ns", name)
    assert writer.table_event("ns", name, True, None)  # deleted by hand
    await writer.idle()
    assert kube.list("v1", "configmaps", "ns")[0]["data"][c.TABLE_DATA_KEY] == data
    kube.objects[("configmaps", "ns", name)]["data"][c.TABLE_DATA_KEY] = '{"version": 1, "pools": {}, "adapters": {}}'
    assert writer.table_event("ns", name, False, '{"version": 1, "pools": {}, "adapters": {}}')  # emptied by hand
    await writer.idle()
    assert set(table_of(kube).adapters) == {"a"}


async def test_writer_survives_api_errors_and_retries() -> None:
    kube = FakeKube()
    writer = fast_writer(kube)
    kube.put("basemodelpools", pool_obj())
    real_apply, failures = kube.apply, [1]

    def flaky(manifest: dict) -> dict:
        if failures:
            failures.pop()
            raise KubeError(500, "InternalError", "etcd hiccup")
        return real_apply(manifest)

    kube.apply = flaky  # type: ignore[method-assign]
    writer.mark("ns")
    await asyncio.wait_for(writer.idle(), 10)
    assert writer.stats.errors == 1 and len(kube.list("v1", "configmaps", "ns")) == 1


async def test_writer_gives_up_quietly_on_a_namespace_being_deleted() -> None:
    kube = FakeKube()
    writer = fast_writer(kube)
    kube.put("basemodelpools", pool_obj())

    def terminating(manifest: dict) -> dict:
        raise KubeError(
            403,
            "Forbidden",
            'configmaps "loraplex-routes-0" is forbidden: unable to create new '
            "content in namespace ns because it is being terminated",
        )

    kube.apply = terminating  # type: ignore[method-assign]
    writer.mark("ns")
    await asyncio.wait_for(writer.idle(), 5)
    assert writer.stats.errors == 0
    kube.objects.clear()  # the namespace is gone: its writer state is dropped after the next flush
    writer.mark("ns")
    await writer.idle()
    assert writer.namespaces() == []


class _NoStats(Autoscaler):
    def __init__(self, kube: Any) -> None:
        super().__init__(kube, poke_pool=lambda ns, n: None, mark_table=lambda ns: None)


async def test_pool_reconcile_applies_once_and_writes_status_once() -> None:
    kube = FakeKube()
    writer = fast_writer(kube)
    controller = PoolController(kube, writer, _NoStats(kube), clock=lambda: 1000.0)  # type: ignore[arg-type]
    kube.put("basemodelpools", pool_obj(replicas=2, maxReplicas=4))
    await controller.reconcile("ns", "sdxl")
    applied = [k for v, k in kube.calls if v == "apply"]
    assert applied == ["ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget"]
    assert [k for v, k in kube.calls if v == "create"] == ["Secret"]  # the namespace's hop key, once
    key = kube.get("v1", "secrets", "ns", c.HOP_KEY_SECRET)["stringData"][c.HOP_KEY_DATA_KEY]
    assert len(key.strip()) == 64
    dep = kube.get("apps/v1", "deployments", "ns", "sdxl")
    assert dep["spec"]["replicas"] == 2
    status = kube.get(c.API_VERSION, c.POOL_PLURAL, "ns", "sdxl")["status"]
    assert status["desiredReplicas"] == 2 and status["observedGeneration"] == 1
    kube.calls.clear()
    await controller.reconcile("ns", "sdxl")
    assert kube.calls == []  # nothing changed: no apply, no status write
    await controller.reconcile("ns", "sdxl", force_apply=True)  # a resync re-applies, but never a new key
    assert ("create", "Secret") not in kube.calls
    assert kube.get("v1", "secrets", "ns", c.HOP_KEY_SECRET)["stringData"][c.HOP_KEY_DATA_KEY] == key
    await writer.idle()


async def test_a_restarted_operator_reads_instead_of_rewriting() -> None:
    """A new controller (an operator restart, a new leader) finds every child as it would write it:
    no apply; a child someone changed since (its digest differs) is applied again."""
    kube = FakeKube()
    kube.put("basemodelpools", pool_obj(replicas=2, maxReplicas=4))
    first = PoolController(kube, fast_writer(kube), _NoStats(kube), clock=lambda: 1000.0)  # type: ignore[arg-type]
    await first.reconcile("ns", "sdxl")
    kube.calls.clear()
    writer = fast_writer(kube)
    second = PoolController(kube, writer, _NoStats(kube), clock=lambda: 2000.0)  # type: ignore[arg-type]
    await second.reconcile("ns", "sdxl")
    assert [call for call in kube.calls if call[0] != "patch"] == []
    # Another controller restart after the Service was replaced by hand (no digest): only it is applied.
    svc = kube.get("v1", "services", "ns", "sdxl")
    del svc["metadata"]["annotations"][c.ANNOTATION_APPLIED]
    kube.put("services", svc)
    third = PoolController(kube, writer, _NoStats(kube), clock=lambda: 3000.0)  # type: ignore[arg-type]
    await third.reconcile("ns", "sdxl")
    assert [k for v, k in kube.calls if v == "apply"] == ["Service"]
    await writer.idle()


async def test_pool_reconcile_reports_unschedulable_pods() -> None:
    kube = FakeKube()
    controller = PoolController(kube, fast_writer(kube), _NoStats(kube), clock=lambda: 0.0)  # type: ignore[arg-type]
    kube.put("basemodelpools", pool_obj(gpu={"count": 8}))
    pod = ready_pod("sdxl-x", "")
    pod["status"] = {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ]
    }
    kube.put("pods", pod)
    await controller.reconcile("ns", "sdxl")
    conds = {x["type"]: x for x in kube.get(c.API_VERSION, c.POOL_PLURAL, "ns", "sdxl")["status"]["conditions"]}
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in conds["Degraded"]["message"]


def _hub_info(**kw: Any) -> ModelInfo:
    doc = {
        "id": "org/lora",
        "sha": "b" * 40,
        "tags": ["lora"],
        "cardData": {"base_model": "org/sdxl"},
        "siblings": [{"rfilename": "w.safetensors", "size": 1234}],
    }
    doc.update(kw)
    return ModelInfo(**doc)


async def test_hub_adapter_pins_a_commit_once_and_retries_with_backoff() -> None:
    kube = FakeKube()
    calls: list[str] = []
    down = HubError("HubUnreachable", "cannot reach the hub", True)
    outcomes: list[Any] = [down, down, _hub_info()]

    def fetch(repo: str, revision: str, token: Any, timeout: float) -> Any:
        calls.append(repo)
        result = outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    ctl = AdapterController(kube, fast_writer(kube), clock=lambda: 0.0, fetch=fetch)  # type: ignore[arg-type]
    body = kube.put("loraadapters", adapter_obj("papercut", source={"type": "hub", "repo": "org/lora"}))
    pools = [PoolInfo("sdxl", "org/sdxl")]
    with pytest.raises(Retry) as first:
        await ctl.reconcile(body, 0, pools, {})
    with pytest.raises(Retry) as later:
        await ctl.reconcile(body, 3, pools, {})
    assert later.value.delay == 8 * first.value.delay  # exponential backoff
    status = kube.get(c.API_VERSION, "loraadapters", "ns", "papercut")["status"]
    assert status["phase"] == "Pending"
    assert {x["type"]: x["reason"] for x in status["conditions"]}["Ready"] == "HubUnreachable"

    body = kube.get(c.API_VERSION, "loraadapters", "ns", "papercut")
    outcome = await ctl.reconcile(body, 1, pools, {})
    assert outcome.phase == "Ready"
    status = kube.get(c.API_VERSION, "loraadapters", "ns", "papercut")["status"]
    assert (status["resolvedRevision"], status["resolvedFilename"], status["resolvedGeneration"], status["size"]) == (
        "b" * 40,
        "w.safetensors",
        1,
        1234,
    )
    # Pinned for this generation: a restart's re-check does not call the hub again.
    await ctl.reconcile(kube.get(c.API_VERSION, "loraadapters", "ns", "papercut"), 0, pools, {})
    assert calls == ["org/lora"] * 3


async def test_adapter_failures_have_reasons() -> None:
    kube = FakeKube()
    ctl = AdapterController(kube, fast_writer(kube), fetch=lambda *a: _hub_info(tags=["diffusers"]))  # type: ignore[arg-type]
    cases = {
        "no-pool": (adapter_obj("no-pool", pool="missing"), "PoolNotFound", "Pending"),
        "not-lora": (adapter_obj("not-lora", source={"type": "hub", "repo": "org/x"}), "NotALora", "Failed"),
        # Lost its alias: routed by its own name (as build_table does), so Ready, plus an AliasConflict condition.
        "taken": (adapter_obj("taken", aliases=["px"]), "Routed", "Ready"),
        "ok": (
            adapter_obj("ok", source={"type": "url", "url": "https://h/x.safetensors", "sha256": "c" * 64}),
            "Routed",
            "Ready",
        ),
    }
    claims = {"px": [("taken", "alias"), ("older", "primary")]}
    for name, (obj, reason, phase) in cases.items():
        body = kube.put("loraadapters", obj)
        try:
            outcome = await ctl.reconcile(body, 0, [PoolInfo("sdxl", "org/sdxl")], claims)
        except Retry as e:  # "taken" is Ready, retried slowly until its alias is free
            assert reason in str(e) or (name == "taken" and "AliasConflict" in str(e))
        else:
            assert outcome.phase == "Ready"
        status = kube.get(c.API_VERSION, "loraadapters", "ns", name)["status"]
        assert status["phase"] == phase, (name, status)
        assert {x["type"]: x["reason"] for x in status["conditions"]}["Ready"] == reason
    assert json.dumps(status)  # plain JSON, nothing of kopf in it
    taken = {x["type"]: x for x in kube.get(c.API_VERSION, "loraadapters", "ns", "taken")["status"]["conditions"]}
    assert taken["AliasConflict"]["status"] == "True" and "'px'" in taken["AliasConflict"]["message"]
    # The table agrees: "taken" is routed by its name, without the alias.
    build = build_table([pool_obj()], [kube.get(c.API_VERSION, "loraadapters", "ns", "taken"), adapter_obj("px")], {})
    assert "taken" in build.table.adapters and build.table.adapters["taken"].aliases == ()
    assert build.table.resolve("px") == ("sdxl", "px")
    # Only the Failed one is an Event (a Warning about that adapter).
    events = kube.list("v1", "events", "ns")
    assert [(e["involvedObject"]["name"], e["reason"], e["type"]) for e in events] == [
        ("not-lora", "NotALora", "Warning")
    ]


async def test_a_failure_is_one_event_however_often_it_is_seen() -> None:
    kube = FakeKube()
    ctl = AdapterController(kube, fast_writer(kube), fetch=lambda *a: _hub_info(tags=["diffusers"]))  # type: ignore[arg-type]
    kube.put("loraadapters", adapter_obj("not-lora", source={"type": "hub", "repo": "org/x"}))
    for retry in range(3):
        body = kube.get(c.API_VERSION, "loraadapters", "ns", "not-lora")
        if retry == 2:
            body["status"] = {}  # e.g. the status was reset: the same failure is seen anew
        with pytest.raises(Retry):
            await ctl.reconcile(body, retry, [PoolInfo("sdxl", "org/sdxl")], {})
    assert len(kube.list("v1", "events", "ns")) == 1


async def test_autoscaler_polls_sidecars_sizes_the_pool_and_tolerates_dead_ones() -> None:
    """Real HTTP: a sidecar-like /v1/stats on loopback, plus a pod whose sidecar does not answer."""
    from aiohttp import web

    from loraplex_operator.logic.specs import parse_pool_spec

    doc = {
        "pools": {"sdxl": {"requestRate": 1.0, "meanServiceSeconds": 2.0, "inFlight": 1, "lastRequestTime": 1000.0}},
        "adapters": {"pixel": {"pool": "sdxl", "requestRate": 0.9, "lastRequestTime": 999.0}},
    }

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/v1/stats", stats)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        kube = FakeKube()
        kube.put("basemodelpools", pool_obj(replicas=1, maxReplicas=8))
        kube.put("loraadapters", adapter_obj("pixel"))
        kube.put("pods", ready_pod("sdxl-1", "127.0.0.1"))
        kube.put("pods", ready_pod("sdxl-2", "127.0.0.2"))  # nothing listens there: no data, no crash
        pokes: list[tuple[str, str]] = []
        marks: list[str] = []
        scaler = Autoscaler(
            kube,
            poke_pool=lambda ns, n: pokes.append((ns, n)),
            mark_table=marks.append,  # type: ignore[arg-type]
            stats_timeout_s=1.0,
            clock=lambda: 1001.0,
            stats_port=port,
        )
        scaler.track("ns", "sdxl", parse_pool_spec(pool_obj(replicas=1, maxReplicas=8)["spec"]), 1)
        import aiohttp

        async with aiohttp.ClientSession() as session:
            await scaler.tick(session)
        # 1 req/s x 2 s = 2 busy at 0.7 target -> 3 replicas, through the scale subresource.
        assert kube.get(c.API_VERSION, c.POOL_PLURAL, "ns", "sdxl")["spec"]["replicas"] == 3
        assert ("patch", "basemodelpools/scale") in kube.calls
        assert scaler.pool_load("ns", "sdxl").request_rate == 1.0
        assert pokes == [("ns", "sdxl")] and marks == ["ns"]
        assert scaler.adapter_needs("ns") == {"pixel": 3}  # 0.9 x 2 / 0.7
        assert scaler.polls == 2 and scaler.failed_polls == 1
        await asyncio.sleep(0.05)  # the adapter status patch task
        assert kube.get(c.API_VERSION, "loraadapters", "ns", "pixel")["status"]["requestRate"] == 0.9
    finally:
        await runner.cleanup()


async def test_autoscaler_without_any_stats_changes_nothing() -> None:
    from loraplex_operator.logic.specs import parse_pool_spec

    kube = FakeKube()
    kube.put("basemodelpools", pool_obj(replicas=2))
    kube.put("pods", ready_pod("sdxl-1", "127.0.0.1"))
    scaler = Autoscaler(
        kube,
        poke_pool=lambda ns, n: None,
        mark_table=lambda ns: None,  # type: ignore[arg-type]
        stats_timeout_s=0.5,
        stats_port=9,
    )  # port 9: refused
    scaler.track("ns", "sdxl", parse_pool_spec(pool_obj(replicas=2)["spec"]), 2)
    import aiohttp

    async with aiohttp.ClientSession() as session:
        await scaler.tick(session)
    assert kube.calls == [] and scaler.pool_load("ns", "sdxl") is None
