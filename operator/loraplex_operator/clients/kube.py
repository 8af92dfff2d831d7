"""A small, generic Kubernetes REST client over the official client's transport (I/O).

The operator handles a dozen kinds as plain dicts (the manifest builders'
output, the table builder's input), so one generic path per verb is simpler
than the typed per-kind APIs. Blocking: call through `Kube.run` from asyncio.
Server-side apply makes re-applying an unchanged manifest a no-op.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import quote

from kubernetes import client, config

from loraplex_operator import constants as c

log = logging.getLogger(__name__)
T = TypeVar("T")
USER_AGENT = "loraplex-operator"
LANE_CONNECTIONS = 8  # pooled connections kept for lanes (Kube.lane) on top of the main executor's

_PLURALS = {
    "ConfigMap": "configmaps",
    "Pod": "pods",
    "Secret": "secrets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Lease": "leases",
    "Event": "events",
    c.POOL_KIND: c.POOL_PLURAL,
    c.ADAPTER_KIND: c.ADAPTER_PLURAL,
}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None
) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = base + (f"/namespaces/{quote(namespace, safe='')}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def manifest_path(manifest: dict[str, Any]) -> str:
    meta = manifest["metadata"]
    return resource_path(manifest["apiVersion"], _PLURALS[manifest["kind"]], meta.get("namespace"), meta["name"])


class Kube:
    """Blocking verbs on dicts, plus `run` to call them from the event loop."""

    def __init__(
        self,
        configuration: client.Configuration | None = None,
        workers: int = 16,
        timeout_s: float = 30.0,
        user_agent: str = USER_AGENT,
    ) -> None:
        if configuration is None:
            configuration = load_configuration()
        # Our own executor and connection pool, sized for bursts (the default
        # executor is tiny on small nodes).
        configuration.connection_pool_maxsize = workers + LANE_CONNECTIONS
        self.api = client.ApiClient(configuration)
        # Named in the apiserver's audit log (kopf's own requests say `kopf/<version>`).
        self.api.user_agent = user_agent
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self.requests = 0
        self.requests_by_verb: Counter[str] = Counter()  # GET/POST/PATCH/PUT/DELETE: the operator's /healthz
        self._lanes: list[Kube] = []

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def lane(self, workers: int, name: str) -> Kube:
        """The same client and counters with its own threads: its calls never queue behind this one's.

        The table writer has one: in a burst of thousands of adapters their
        status patches fill the main executor's queue, and the table's reads
        and writes waited behind all of them (minutes at 2,000 adapters).
        """
        other = copy.copy(self)
        other._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"kube-{name}")
        other._lanes = []
        self._lanes.append(other)
        return other

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for lane in self._lanes:
            lane.close()

    # -- transport -------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        params = [
            (k, v if not isinstance(v, bool) else str(v).lower()) for k, v in (query or {}).items() if v is not None
        ]
        serialized = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        self.requests += 1
        self.requests_by_verb[method] += 1
        try:
            resp = self.api.call_api(*serialized, _request_timeout=self.timeout_s)
            resp.read()
        except client.ApiException as e:  # raised by the transport on some errors
            raise KubeError(e.status or 0, e.reason or "", _status_message(e.body)) from e
        if resp.status >= 400:
            raise KubeError(resp.status, resp.reason or "", _status_message(resp.data))
        if not resp.data:
            return None
        return json.loads(resp.data)

    # -- verbs -----------------------------------------------------------

    def get(
        self, api_version: str, plural: str, namespace: str | None, name: str, subresource: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return self.request("GET", resource_path(api_version, plural, namespace, name, subresource))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def get_manifest(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """The live object a manifest names, or None."""
        try:
            return self.request("GET", manifest_path(manifest))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def list(
        self,
        api_version: str,
        plural: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        from_cache: bool = False,
    ) -> list[dict[str, Any]]:
        # resourceVersion=0 serves from the apiserver's watch cache: cheap, and
        # at least as new as the watch event that made us look.
        query = {"labelSelector": label_selector, "resourceVersion": "0" if from_cache else None}
        doc = self.request("GET", resource_path(api_version, plural, namespace), query=query)
        items = doc.get("items") or []
        # Lists omit each item's apiVersion/kind; owner references need them.
        kind = (doc.get("kind") or "").removesuffix("List")
        for item in items:
            item.setdefault("apiVersion", api_version)
            if kind:
                item.setdefault("kind", kind)
        return items

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply, forcing ownership of the fields we set."""
        return self.request(
            "PATCH",
            manifest_path(manifest),
            body=manifest,
            query={"fieldManager": c.FIELD_MANAGER, "force": True},
            content_type="application/apply-patch+yaml",
        )

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], _PLURALS[manifest["kind"]], meta.get("namespace"))
        return self.request("POST", path, body=manifest, query={"fieldManager": c.FIELD_MANAGER})

    def replace(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", manifest_path(manifest), body=manifest, query={"fieldManager": c.FIELD_MANAGER})

    def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> None:
        try:
            self.request("DELETE", resource_path(api_version, plural, namespace, name))
        except KubeError as e:
            if e.status != 404:
                raise

    def merge_patch(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: dict[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "PATCH",
            resource_path(api_version, plural, namespace, name, subresource),
            body=patch,
            query={"fieldManager": c.FIELD_MANAGER},
            content_type="application/merge-patch+json",
        )


def load_configuration() -> client.Configuration:
    """In-cluster credentials in a pod, else $KUBECONFIG / ~/.kube/config."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        # Read $KUBECONFIG now: the client library resolves its default path at import time.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    return configuration


def _status_message(data: Any) -> str:
    if not data:
        return ""
    try:
        doc = json.loads(data)
        return str(doc.get("message") or doc)
    except (ValueError, TypeError, AttributeError):
        return str(data)[:500]
