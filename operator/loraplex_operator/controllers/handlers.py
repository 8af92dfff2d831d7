"""kopf wiring: settings and handlers. Every handler only delegates.

Triggers map onto the one reconcile per kind:
- BaseModelPool create/update/resume -> PoolController.reconcile
- pods and Deployments of a pool (any event) -> a debounced poke of that reconcile
- any pod event -> TableWriter.mark(namespace)
- a routing-table ConfigMap deleted, edited or unlabelled by anyone else -> TableWriter.mark(namespace)

Every pool and adapter event also reaches the operator's own reflectors and
stores, which feed the adapter queue, the routing table and the pools' other
bookkeeping (app.py, reflector.py, stores.py); kopf has no adapter handler.
No handler needs a finalizer (owner references and the level-triggered
table cover deletion), so deleting a pool or adapter never waits for the
operator to be running.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import kopf

from loraplex_operator import constants as c
from loraplex_operator.clients.kube import load_configuration

if TYPE_CHECKING:
    from loraplex_operator.controllers.app import Operator

log = logging.getLogger(__name__)
OWNED = {c.LABEL_MANAGED_BY: c.MANAGED_BY}
_OWNED_SELECTOR = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY}"


class CompactDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base without the object's annotations (only pools have kopf change handlers now).

    kopf stores the last handled "essence" of an object in an annotation, and by
    default that essence includes all the object's annotations: one annotation of
    ~200 KB (accepted by the apiserver) then makes kopf's own patch exceed the 256 KiB
    limit on all annotations, and every event fails with a 422. No handler of ours
    reacts to annotations.
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        meta = essence.get("metadata") or {}
        meta.pop("annotations", None)
        if not meta:
            essence.pop("metadata", None)
        return essence


def build_settings() -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # kopf's bookkeeping lives in annotations under our own prefix, never in .status.
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.KOPF_ANNOTATION_PREFIX)
    s.persistence.diffbase_storage = CompactDiffBaseStorage(prefix=c.KOPF_ANNOTATION_PREFIX, key=c.KOPF_DIFFBASE_KEY)
    s.persistence.finalizer = f"{c.KOPF_ANNOTATION_PREFIX}/finalizer"
    # One k8s Event per handler success would be thousands in a burst; keep warnings and errors.
    s.posting.level = logging.WARNING
    # Leader election (leader.py) decides who runs; kopf's own peering is off.
    s.peering.standalone = True
    # Least privilege: no need to list CRDs or namespaces (the CRDs are installed first).
    s.scanning.disabled = True
    # Only our pods and Deployments, filtered by the apiserver rather than after the fact.
    s.watching.label_selectors["v1", "pods"] = _OWNED_SELECTOR
    s.watching.label_selectors["apps", "v1", "deployments"] = _OWNED_SELECTOR
    # The routing-table shards: a shard deleted, edited or unlabelled by hand is restored at once (a shard whose
    # label is removed leaves this label-selected watch as a DELETED event).
    s.watching.label_selectors["v1", "configmaps"] = f"{c.LABEL_ROUTING_TABLE}=true"
    s.watching.server_timeout = 300
    s.networking.request_timeout = 60
    return s


def build_registry(op: Operator) -> kopf.OperatorRegistry:
    # Explicit ids: they name kopf's annotations (the default id of a nested function would be
    # "build_registry.<locals>.fn").
    registry = kopf.OperatorRegistry()
    pools = (c.GROUP, c.VERSION, c.POOL_PLURAL)

    # -- credentials: the same ones as our own client (kube.load_configuration) --

    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info()

    # -- pools ---------------------------------------------------------------

    @kopf.on.resume(*pools, registry=registry, backoff=5, id="pool_changed")
    @kopf.on.create(*pools, registry=registry, backoff=5, id="pool_changed")
    @kopf.on.update(*pools, registry=registry, backoff=5, id="pool_changed")
    async def pool_changed(namespace: str, name: str, **_: Any) -> None:
        await op.pools.reconcile(namespace, name)

    @kopf.on.event("v1", "pods", labels=OWNED, registry=registry, id="pod_event")
    async def pod_event(namespace: str, labels: Any, **_: Any) -> None:
        pool = labels.get(c.LABEL_POOL)
        if pool:
            op.pools.poke(namespace, pool)
            op.writer.mark(namespace)

    @kopf.on.event("apps", "v1", "deployments", labels=OWNED, registry=registry, id="deployment_event")
    async def deployment_event(namespace: str, labels: Any, type: str | None, **_: Any) -> None:
        pool = labels.get(c.LABEL_POOL)
        if pool:
            if type == "DELETED":
                op.pools.invalidate(namespace, pool)  # deleted by hand: re-create it
            op.pools.poke(namespace, pool)

    # No `labels=` filter here: the watch itself is label-selected (settings), and a shard whose label was just
    # removed arrives as DELETED, possibly with its new (unlabelled) body.
    @kopf.on.event("v1", "configmaps", registry=registry, id="table_event")
    async def table_event(namespace: str, name: str, type: str | None, body: Any, **_: Any) -> None:
        if namespace and name.startswith(c.TABLE_CONFIGMAP_PREFIX + "-"):
            data = (body.get("data") or {}).get(c.TABLE_DATA_KEY)
            op.writer.table_event(namespace, name, type == "DELETED", data)

    return registry


def connection_info() -> kopf.ConnectionInfo:
    """kopf's credentials, from the configuration our REST client uses (in-cluster, else $KUBECONFIG).

    A registry of our own has no default login handler, and kopf's would
    read the kubeconfig path the client library fixed at import time.
    """
    config = load_configuration()
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )
