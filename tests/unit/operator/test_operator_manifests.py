"""Manifests built from a BaseModelPool spec (pure builders)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from loraplex_operator import constants as c
from loraplex_operator.logic.manifests import (
    applied_digest,
    build_deployment,
    build_hop_key_secret,
    build_pdb,
    build_pool_objects,
    build_role,
    build_service,
    manifest_digest,
    selector_string,
    termination_grace_seconds,
)
from loraplex_operator.logic.specs import SpecError, parse_pool_spec

OWNER = {
    "apiVersion": c.API_VERSION,
    "kind": c.POOL_KIND,
    "metadata": {"name": "sdxl", "namespace": "team-a", "uid": "1234-uid"},
}


def _spec(**extra: Any) -> Any:
    return parse_pool_spec({"model": {"name": "stabilityai/sdxl", "revision": "abc"}, **extra})


def _containers(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ct["name"]: ct for ct in dep["spec"]["template"]["spec"]["containers"]}


def test_deployment_has_worker_and_sidecar_with_contract_args() -> None:
    dep = build_deployment(OWNER, _spec(), 2)
    assert dep["spec"]["replicas"] == 2
    cts = _containers(dep)
    worker, sidecar = cts["worker"], cts["sidecar"]
    assert worker["image"] == sidecar["image"] == c.DEFAULT_INFERENCE_IMAGE
    args = worker["args"]
    assert args[:1] == ["worker"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--model"] == "stabilityai/sdxl" and flags["--revision"] == "abc"
    assert flags["--family"] == "auto"  # the worker reads the family from the model
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "8081"
    assert flags["--disk-cache-dir"] == "/var/cache/loraplex" and flags["--hf-home"] == "/models"
    for flag in (
        "--dtype",
        "--gpu-slots",
        "--ram-cache-mb",
        "--disk-cache-mb",
        "--max-rank",
        "--max-steps",
        "--max-width",
        "--max-height",
        "--queue-size",
    ):
        assert flag in flags
    assert sidecar["args"] == [
        "sidecar",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--worker-url",
        "http://127.0.0.1:8081",
        "--pod-name",
        "$(POD_NAME)",
        "--table-configmaps",
        "$(POD_NAMESPACE)",
        "--hop-key-file",
        "/etc/loraplex/hop-key",
    ]
    env = {e["name"] for e in sidecar["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env


def test_gpu_request_tolerations_and_scheduling_fields() -> None:
    spec = _spec(
        gpu={"resourceName": "amd.com/gpu", "count": 2},
        nodeSelector={"pool": "gpu"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        priorityClassName="inference-high",
        affinity={"nodeAffinity": {}},
    )
    pod = build_deployment(OWNER, spec, 1)["spec"]["template"]["spec"]
    worker = {ct["name"]: ct for ct in pod["containers"]}["worker"]
    assert worker["resources"]["requests"]["amd.com/gpu"] == 2
    assert worker["resources"]["limits"]["amd.com/gpu"] == 2
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["priorityClassName"] == "inference-high"
    assert pod["affinity"] == {"nodeAffinity": {}}
    keys = [t["key"] for t in pod["tolerations"]]
    assert keys == ["dedicated", "amd.com/gpu"]  # the GPU taint is tolerated automatically


def test_cpu_only_pool_requests_no_gpu_and_adds_no_toleration() -> None:
    pod = build_deployment(OWNER, _spec(gpu={"count": 0}), 1)["spec"]["template"]["spec"]
    worker = {ct["name"]: ct for ct in pod["containers"]}["worker"]
    assert "nvidia.com/gpu" not in worker["resources"]["requests"]
    assert "tolerations" not in pod


def test_probes_drain_and_grace_period() -> None:
    spec = _spec(drainSeconds=15, limits={"requestTimeoutSeconds": 600}, startupTimeoutSeconds=1200)
    dep = build_deployment(OWNER, spec, 1)
    cts = _containers(dep)
    sidecar, worker = cts["sidecar"], cts["worker"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = worker["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200
    for ct in (sidecar, worker):
        assert ct["lifecycle"]["preStop"] == {"sleep": {"seconds": 15}}
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == termination_grace_seconds(spec) and grace > 15 + 600


def test_every_probe_port_resolves_in_its_own_container() -> None:
    """A named probe port must be one of the probed container's own ports (kubelet rule), and a
    numbered one must be a port something in the pod listens on for the pod IP (the sidecar's;
    the worker binds loopback only). The real node found the worker's probe naming the sidecar's port."""
    dep = build_deployment(OWNER, _spec(), 1)
    pod_ports = {p["containerPort"] for ct in _containers(dep).values() for p in ct.get("ports", [])}
    assert pod_ports == {c.SIDECAR_PORT}
    for ct in _containers(dep).values():
        own = {p["name"] for p in ct.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind not in ct:
                continue
            port = ct[kind]["httpGet"]["port"]
            assert (port in own) if isinstance(port, str) else (port in pod_ports), (ct["name"], kind, port)


def test_both_containers_get_the_namespace_hop_key() -> None:
    dep = build_deployment(OWNER, _spec(), 1)
    pod = dep["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "hop-key")
    assert volume["secret"]["secretName"] == c.HOP_KEY_SECRET
    assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == c.RUN_AS_USER
    for ct in _containers(dep).values():
        mount = next(m for m in ct["volumeMounts"] if m["name"] == "hop-key")
        assert mount == {"name": "hop-key", "mountPath": c.HOP_KEY_DIR, "readOnly": True}
        assert ct["args"][ct["args"].index("--hop-key-file") + 1] == c.HOP_KEY_DIR


def test_worker_enforces_the_pools_source_rules() -> None:
    args = _containers(build_deployment(OWNER, _spec(), 1))["worker"]["args"]
    assert args[args.index("--adapter-path-root") + 1] == "/models/loras"
    assert "--allow-private-sources" not in args
    spec = _spec(adapterSources={"pathRoots": ["/data/a", "/data/b"], "allowPrivateUrls": True})
    args = _containers(build_deployment(OWNER, spec, 1))["worker"]["args"]
    roots = [args[i + 1] for i, a in enumerate(args) if a == "--adapter-path-root"]
    assert roots == ["/data/a", "/data/b"] and "--allow-private-sources" in args


def test_ca_bundle_is_mounted_read_only_into_the_worker_only() -> None:
    plain = build_deployment(OWNER, _spec(), 1)["spec"]["template"]["spec"]
    assert "--adapter-ca-file" not in _containers({"spec": {"template": {"spec": plain}}})["worker"]["args"]
    assert not [v for v in plain["volumes"] if v["name"] == "adapter-ca"]

    spec = _spec(adapterSources={"caBundle": {"configMapName": "corp-ca"}})
    pod = build_deployment(OWNER, spec, 1)["spec"]["template"]["spec"]
    worker, sidecar = (ct for ct in pod["containers"])
    assert (worker["name"], sidecar["name"]) == ("worker", "sidecar")
    args = worker["args"]
    assert args[args.index("--adapter-ca-file") + 1] == "/etc/loraplex/adapter-ca/ca.crt"
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "adapter-ca")
    assert mount == {"name": "adapter-ca", "mountPath": "/etc/loraplex/adapter-ca", "readOnly": True}
    assert "subPath" not in mount  # a directory mount follows ConfigMap updates
    volume = next(v for v in pod["volumes"] if v["name"] == "adapter-ca")
    assert volume["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
        "defaultMode": 0o444,
    }
    # The gateway side of the pod is unaffected: the sidecar neither mounts nor is told about it.
    assert all(m["name"] != "adapter-ca" for m in sidecar["volumeMounts"])
    assert "--adapter-ca-file" not in sidecar["args"]

    other_key = _spec(adapterSources={"caBundle": {"configMapName": "corp-ca", "key": "bundle.pem"}})
    volume = next(v for v in _volumes_of(other_key) if v["name"] == "adapter-ca")
    assert volume["configMap"]["items"] == [{"key": "bundle.pem", "path": "ca.crt"}]
    # A change of bundle is a change of the pod template (a rollout), the same one is not.
    assert json.dumps(build_deployment(OWNER, spec, 1)) != json.dumps(build_deployment(OWNER, other_key, 1))
    assert json.dumps(build_deployment(OWNER, spec, 1)) == json.dumps(build_deployment(OWNER, spec, 1))


def test_ca_bundle_spec_needs_a_config_map_name() -> None:
    with pytest.raises(SpecError, match="configMapName"):
        _spec(adapterSources={"caBundle": {"key": "ca.crt"}})


def _volumes_of(spec: Any) -> list[dict[str, Any]]:
    return build_deployment(OWNER, spec, 1)["spec"]["template"]["spec"]["volumes"]


def test_hop_key_secret() -> None:
    secret = build_hop_key_secret("team-a", "ab" * 32)
    assert secret["metadata"] == {
        "name": c.HOP_KEY_SECRET,
        "namespace": "team-a",
        "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY},
    }
    assert secret["stringData"] == {c.HOP_KEY_DATA_KEY: "ab" * 32 + "\n"}
    assert "ownerReferences" not in secret["metadata"]  # shared by every pool (and the gateway) of the namespace


def test_hardened_security_context() -> None:
    pod = build_deployment(OWNER, _spec(), 1)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for ct in pod["containers"]:
        sc = ct["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
    mounts = {m["mountPath"] for ct in pod["containers"] for m in ct["volumeMounts"]}
    assert {"/tmp", "/models", "/var/cache/loraplex"} <= mounts  # writable places, the rest is read-only


def test_model_cache_volume_and_hub_token() -> None:
    spec = _spec(modelCache={"claimName": "models-pvc"}, hubTokenSecret={"name": "hf"})
    pod = build_deployment(OWNER, spec, 1)["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["model-cache"]["persistentVolumeClaim"] == {"claimName": "models-pvc"}
    worker = {ct["name"]: ct for ct in pod["containers"]}["worker"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["HF_HOME"]["value"] == "/models"
    default = build_deployment(OWNER, _spec(), 1)["spec"]["template"]["spec"]
    assert {v["name"]: v for v in default["volumes"]}["model-cache"]["emptyDir"] == {"sizeLimit": "100Gi"}


def test_owner_references_and_labels_on_everything() -> None:
    objs = build_pool_objects(OWNER, _spec(), 1)
    assert [o["kind"] for o in objs] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    for obj in objs:
        ref = obj["metadata"]["ownerReferences"][0]
        assert ref == {
            "apiVersion": c.API_VERSION,
            "kind": c.POOL_KIND,
            "name": "sdxl",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["labels"][c.LABEL_POOL] == "sdxl"


def test_selector_service_pdb_and_role() -> None:
    dep = build_deployment(OWNER, _spec(), 1)
    sel = dep["spec"]["selector"]["matchLabels"]
    assert all(dep["spec"]["template"]["metadata"]["labels"][k] == v for k, v in sel.items())
    assert selector_string("sdxl") == ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
    assert build_service(OWNER)["spec"]["selector"] == sel
    assert build_pdb(OWNER)["spec"]["selector"]["matchLabels"] == sel
    rules = build_role(OWNER)["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]


def test_same_spec_same_manifest_and_spec_change_rolls() -> None:
    a = json.dumps(build_deployment(OWNER, _spec(), 1), sort_keys=True)
    b = json.dumps(build_deployment(OWNER, _spec(), 1), sort_keys=True)
    assert a == b
    changed = build_deployment(OWNER, _spec(image="registry.local/inference:0.2.0"), 1)
    assert changed["spec"]["template"] != json.loads(a)["spec"]["template"]
    # Replicas are not part of the pod template: scaling does not roll pods.
    assert build_deployment(OWNER, _spec(), 3)["spec"]["template"] == json.loads(a)["spec"]["template"]


def test_a_declared_family_reaches_the_worker() -> None:
    spec = parse_pool_spec({"model": {"name": "black-forest-labs/FLUX.1-dev", "pipeline": "flux"}})
    args = _containers(build_deployment(OWNER, spec, 1))["worker"]["args"]
    assert dict(zip(args[1::2], args[2::2], strict=True))["--family"] == "flux"


def test_every_owned_object_carries_the_digest_of_what_was_applied() -> None:
    objs = build_pool_objects(OWNER, _spec(), 1)
    for m in objs:
        stamped = applied_digest(m)
        assert stamped and len(stamped) == 64
        # The digest ignores its own annotation: a live object read back gives the same digest.
        assert manifest_digest(m) == stamped
    again = build_pool_objects(OWNER, _spec(), 1)
    assert [applied_digest(m) for m in again] == [applied_digest(m) for m in objs]
    # Any change the operator would write changes the digest: replicas, the pod template, the owner.
    kinds = {m["kind"]: applied_digest(m) for m in objs}
    assert applied_digest(build_deployment(OWNER, _spec(), 2)) is None  # unstamped on its own
    scaled = {m["kind"]: applied_digest(m) for m in build_pool_objects(OWNER, _spec(), 2)}
    assert scaled["Deployment"] != kinds["Deployment"] and scaled["Service"] == kinds["Service"]
    other = {m["kind"]: applied_digest(m) for m in build_pool_objects(OWNER, _spec(image="r/i:2"), 1)}
    assert other["Deployment"] != kinds["Deployment"]
    assert applied_digest(None) is None and applied_digest({"metadata": {}}) is None
