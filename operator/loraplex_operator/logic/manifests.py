"""Pure builders: a BaseModelPool spec in, Kubernetes manifests out.

No I/O here. Every function returns plain dicts ready for server-side apply;
the same inputs always give the same dict, so re-applying after a restart is
a no-op on the apiserver (no new ReplicaSet, no rollout).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from loraplex.api.open_catalog import dump_policy
from loraplex_operator import constants as c
from loraplex_operator.logic.specs import PoolSpec

Manifest = dict[str, Any]


def selector_labels(pool: str) -> dict[str, str]:
    """The immutable Deployment selector: only labels that never change for a pool."""
    return {c.LABEL_NAME: "loraplex-inference", c.LABEL_INSTANCE: pool}


def pool_labels(pool: str) -> dict[str, str]:
    return {
        **selector_labels(pool),
        c.LABEL_COMPONENT: "inference",
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_POOL: pool,
    }


def selector_string(pool: str) -> str:
    """`status.selector` for the scale subresource (what `kubectl scale`/HPA read)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pool).items()))


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """Controller reference to the pool: deleting it garbage-collects what we made."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", c.API_VERSION),
        "kind": owner.get("kind", c.POOL_KIND),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(name: str, namespace: str, pool: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": pool_labels(pool),
        "ownerReferences": [owner_reference(owner)],
    }


def inference_service_account_name(pool: str) -> str:
    return f"{pool}-inference"


HOP_KEY_MOUNT = {"name": "hop-key", "mountPath": c.HOP_KEY_DIR, "readOnly": True}
ADAPTER_CA_VOLUME = "adapter-ca"


def build_hop_key_secret(namespace: str, key: str) -> Manifest:
    """The namespace's hop key (created once, never applied again: a new key would cut every pod off)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": c.HOP_KEY_SECRET,
            "namespace": namespace,
            "labels": {c.LABEL_MANAGED_BY: c.MANAGED_BY},
        },
        "type": "Opaque",
        "stringData": {c.HOP_KEY_DATA_KEY: key + "\n"},
    }


def worker_args(spec: PoolSpec) -> list[str]:
    cache, limits = spec.adapter_cache, spec.limits
    return [
        "worker",
        "--model",
        spec.model.name,
        "--revision",
        spec.model.revision,
        "--dtype",
        spec.model.dtype,
        "--family",
        spec.model.pipeline,
        "--host",
        "127.0.0.1",
        "--port",
        str(c.WORKER_PORT),
        "--gpu-slots",
        str(cache.gpu_slots),
        "--ram-cache-mb",
        str(cache.ram_cache_mb),
        "--disk-cache-mb",
        str(cache.disk_cache_mb),
        "--disk-cache-dir",
        c.DISK_CACHE_DIR,
        "--max-rank",
        str(cache.max_rank),
        "--max-steps",
        str(limits.max_steps),
        "--max-width",
        str(limits.max_width),
        "--max-height",
        str(limits.max_height),
        "--queue-size",
        str(limits.queue_size),
        "--hf-home",
        c.MODEL_CACHE_DIR,
        "--hop-key-file",
        c.HOP_KEY_DIR,
        # The worker enforces the pool's source rules too (the operator's admission check is the first line).
        *[arg for root in spec.adapter_sources.path_roots for arg in ("--adapter-path-root", root)],
        *(["--allow-private-sources"] if spec.adapter_sources.allow_private_urls else []),
        *(["--open-catalog", dump_policy(spec.open_catalog.policy())] if spec.open_catalog.enabled else []),
        *(
            ["--adapter-ca-file", f"{c.ADAPTER_CA_DIR}/{c.ADAPTER_CA_FILE}"]
            if spec.adapter_sources.ca_bundle is not None
            else []
        ),
    ]


def sidecar_args() -> list[str]:
    return [
        "sidecar",
        "--host",
        "0.0.0.0",
        "--port",
        str(c.SIDECAR_PORT),
        "--worker-url",
        f"http://127.0.0.1:{c.WORKER_PORT}",
        "--pod-name",
        "$(POD_NAME)",
        "--table-configmaps",
        "$(POD_NAMESPACE)",
        "--hop-key-file",
        c.HOP_KEY_DIR,
    ]


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": c.RUN_AS_USER,
        "runAsGroup": c.RUN_AS_USER,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(path: str, period: int, timeout: int, failures: int, port: int | str = "http") -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _pre_stop(spec: PoolSpec) -> dict[str, Any]:
    # Native sleep action (no shell in the image needed): while we sleep the
    # endpoint controllers and every sidecar's table drop this pod; only then
    # does SIGTERM arrive and the sidecar stop taking work and drain.
    if spec.drain_seconds <= 0:
        return {}
    return {"lifecycle": {"preStop": {"sleep": {"seconds": spec.drain_seconds}}}}


def termination_grace_seconds(spec: PoolSpec) -> int:
    """Longer than drain + the longest request, so in-flight work can finish."""
    return spec.drain_seconds + spec.limits.request_timeout_seconds + 15


def _worker_env(spec: PoolSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": c.MODEL_CACHE_DIR},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "TMPDIR", "value": "/tmp"},
    ]
    if spec.hub_token_secret is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": spec.hub_token_secret.name, "key": spec.hub_token_secret.key}},
            }
        )
    return env


def _worker_resources(spec: PoolSpec) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    limits: dict[str, Any] = {"memory": spec.resources.memory}
    if spec.gpu.count > 0:
        # Extended resources must be equal in requests and limits.
        requests[spec.gpu.resource_name] = spec.gpu.count
        limits[spec.gpu.resource_name] = spec.gpu.count
    return {"requests": requests, "limits": limits}


def _tolerations(spec: PoolSpec) -> list[dict[str, Any]]:
    tolerations = [dict(t) for t in spec.tolerations]
    if spec.gpu.count > 0 and not any(t.get("key") == spec.gpu.resource_name for t in tolerations):
        # GPU nodes are conventionally tainted with the resource name; a pool
        # that asks for that resource obviously means to run there.
        tolerations.append({"key": spec.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _affinity(pool: str, spec: PoolSpec) -> dict[str, Any]:
    if spec.affinity is not None:
        return dict(spec.affinity)
    # Spread replicas over nodes when we can: a node loss then costs one pod.
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector_labels(pool)},
                    },
                }
            ]
        }
    }


def _volumes(spec: PoolSpec) -> list[dict[str, Any]]:
    if spec.model_cache.claim_name:
        model_cache: dict[str, Any] = {"persistentVolumeClaim": {"claimName": spec.model_cache.claim_name}}
    else:
        model_cache = {"emptyDir": {"sizeLimit": spec.model_cache.size_limit}}
    disk_mb = spec.adapter_cache.disk_cache_mb + 1024  # headroom for partial downloads
    return [
        {"name": "model-cache", **model_cache},
        {"name": "adapter-cache", "emptyDir": {"sizeLimit": f"{disk_mb}Mi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
        # torch/diffusers use /dev/shm; the runtime default of 64 MiB is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}},
        # Group-readable by fsGroup (RUN_AS_USER), nobody else.
        {"name": "hop-key", "secret": {"secretName": c.HOP_KEY_SECRET, "defaultMode": 0o440}},
        *_adapter_ca_volume(spec),
    ]


def _adapter_ca_volume(spec: PoolSpec) -> list[dict[str, Any]]:
    """The pool's CA bundle ConfigMap, its one key projected as ca.crt (public certificates: world-readable)."""
    ref = spec.adapter_sources.ca_bundle
    if ref is None:
        return []
    items = [{"key": ref.key, "path": c.ADAPTER_CA_FILE}]
    return [
        {"name": ADAPTER_CA_VOLUME, "configMap": {"name": ref.config_map_name, "items": items, "defaultMode": 0o444}}
    ]


def _adapter_ca_mounts(spec: PoolSpec) -> list[dict[str, Any]]:
    # A directory mount, not subPath: the kubelet updates it when the ConfigMap changes.
    if spec.adapter_sources.ca_bundle is None:
        return []
    return [{"name": ADAPTER_CA_VOLUME, "mountPath": c.ADAPTER_CA_DIR, "readOnly": True}]


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def build_pod_template(pool: str, spec: PoolSpec) -> dict[str, Any]:
    startup_failures = max(1, math.ceil(spec.startup_timeout_seconds / 10))
    worker = {
        "name": "worker",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": worker_args(spec),
        "env": _worker_env(spec),
        "resources": _worker_resources(spec),
        # The worker listens on loopback only; its readiness is what the
        # sidecar's /readyz reports, so the long model load is gated here. A named
        # port resolves only among the probed container's own ports (the kubelet
        # refused "http" here on the real node), so the sidecar's is given by number.
        "startupProbe": _http_probe("/readyz", period=10, timeout=5, failures=startup_failures, port=c.SIDECAR_PORT),
        # A crash's last log lines land in the pod status, where the pool's Degraded condition quotes them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": c.MODEL_CACHE_DIR},
            {"name": "adapter-cache", "mountPath": c.DISK_CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            HOP_KEY_MOUNT,
            *_adapter_ca_mounts(spec),
        ],
        **_pre_stop(spec),
    }
    sidecar = {
        "name": "sidecar",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": sidecar_args(),
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
        ],
        "ports": [{"name": "http", "containerPort": c.SIDECAR_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "readinessProbe": _http_probe("/readyz", period=5, timeout=2, failures=2),
        "livenessProbe": _http_probe("/healthz", period=10, timeout=3, failures=3),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, HOP_KEY_MOUNT],
        **_pre_stop(spec),
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": inference_service_account_name(pool),
        "automountServiceAccountToken": True,  # the sidecar watches the table ConfigMaps
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": c.RUN_AS_USER,
            "runAsGroup": c.RUN_AS_USER,
            "fsGroup": c.RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [worker, sidecar],
        "volumes": _volumes(spec),
        "affinity": _affinity(pool, spec),
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    tolerations = _tolerations(spec)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    return {
        "metadata": {"labels": {**pool_labels(pool), c.LABEL_STATS: "true"}},
        "spec": pod_spec,
    }


def build_deployment(owner: dict[str, Any], spec: PoolSpec, replicas: int) -> Manifest:
    pool, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(pool, namespace, pool, owner),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(pool)},
            # Surge one pod rather than drop one: a pool of one keeps serving
            # during a rollout (if there is no spare GPU the pool says so).
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": spec.startup_timeout_seconds + 120,
            "template": build_pod_template(pool, spec),
        },
    }


def build_service(owner: dict[str, Any]) -> Manifest:
    pool, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(pool, namespace, pool, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(pool),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_pdb(owner: dict[str, Any]) -> Manifest:
    pool, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(pool, namespace, pool, owner),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(pool)},
            # A pod stuck unready (e.g. no GPU driver) may still be evicted.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def build_service_account(owner: dict[str, Any]) -> Manifest:
    pool, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(inference_service_account_name(pool), namespace, pool, owner),
    }


def build_role(owner: dict[str, Any]) -> Manifest:
    """What the sidecar needs: read the routing-table ConfigMaps of its namespace."""
    pool, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(inference_service_account_name(pool), namespace, pool, owner),
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
    }


def build_role_binding(owner: dict[str, Any]) -> Manifest:
    pool, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    name = inference_service_account_name(pool)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(name, namespace, pool, owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }


def build_pool_objects(owner: dict[str, Any], spec: PoolSpec, replicas: int) -> list[Manifest]:
    """Everything a pool owns except the routing table, in apply order, each stamped with its digest."""
    return [
        stamp_digest(m)
        for m in (
            build_service_account(owner),
            build_role(owner),
            build_role_binding(owner),
            build_deployment(owner, spec, replicas),
            build_service(owner),
            build_pdb(owner),
        )
    ]


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the manifest as the operator would apply it, without its own digest annotation."""
    annotations = {
        k: v for k, v in (manifest["metadata"].get("annotations") or {}).items() if k != c.ANNOTATION_APPLIED
    }
    meta = {k: v for k, v in manifest["metadata"].items() if k != "annotations"}
    if annotations:
        meta["annotations"] = annotations
    return hashlib.sha256(json.dumps({**manifest, "metadata": meta}, sort_keys=True).encode()).hexdigest()


def stamp_digest(manifest: Manifest) -> Manifest:
    """The manifest with annotation ANNOTATION_APPLIED = its digest."""
    meta = dict(manifest["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), c.ANNOTATION_APPLIED: manifest_digest(manifest)}
    return {**manifest, "metadata": meta}


def applied_digest(live: dict[str, Any] | None) -> str | None:
    """The digest a live object carries, if the operator stamped it."""
    if not live:
        return None
    return ((live.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_APPLIED)
