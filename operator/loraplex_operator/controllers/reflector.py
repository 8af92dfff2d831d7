"""LIST then WATCH one kind, handing every object to a callback in the apiserver's order (I/O for stores.py).

What an informer does, and no more: a paginated LIST (500 objects a page, so
a restart at 30,000 adapters never holds one 45 MB response), then a WATCH
from the list's resourceVersion with bookmarks, resumed from the last version
seen when the server ends it, and a fresh LIST when that version has expired
(410 Gone). After a LIST, the objects the callback knew that are gone get a
DELETED event, so the callback's view matches the cluster again. The watch
stream is the kubernetes client's `watch.Watch`, read in a thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubernetes import client, watch

from loraplex_operator.clients.kube import Kube, KubeError, resource_path

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
OnEvent = Callable[[str | None, dict[str, Any]], None]  # (ADDED/MODIFIED/DELETED, or None when listed; the object)


class Expired(Exception):
    """The resourceVersion to resume from is gone (410): list again."""


def vanished(known: Iterable[Key], listed: set[Key], namespace: str | None) -> list[Key]:
    """The objects a view holds that a fresh LIST (of `namespace`, or every namespace) no longer has."""
    return sorted(k for k in known if (namespace is None or k[0] == namespace) and k not in listed)


class Reflector:
    """One kind (cluster-wide, or each of `namespaces`) into `on_event`; `listed` is set once every first LIST is in."""

    def __init__(
        self,
        kube: Kube,
        api_version: str,
        plural: str,
        namespaces: Sequence[str],
        on_event: OnEvent,
        known: Callable[[], Iterable[Key]],
        page_size: int = 500,
        watch_timeout_s: int = 300,
    ) -> None:
        self.kube = kube
        self.api_version = api_version
        self.plural = plural
        self.namespaces = list(namespaces)
        self.on_event = on_event
        self.known = known
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.listed = asyncio.Event()
        self.lists = 0  # full LISTs done (1 per scope at start, +1 for each expired watch)
        self._scopes_listed = 0

    async def run(self) -> None:
        scopes: list[str | None] = list(self.namespaces) or [None]
        await asyncio.gather(*(self._run_scope(ns) for ns in scopes))

    async def _run_scope(self, namespace: str | None) -> None:
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list(namespace)
                version = await self._watch(namespace, version)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Expired:
                log.info("%s watch (%s): resourceVersion expired; listing again", self.plural, namespace or "all")
                version = None
            except Exception as e:  # noqa: BLE001 - the apiserver away or restarting: resume after a pause
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                log.warning("%s watch (%s) failed: %s; again in %.1fs", self.plural, namespace or "all", e, delay)
                await asyncio.sleep(delay)

    # -- LIST -------------------------------------------------------------------------

    async def _list(self, namespace: str | None) -> str:
        kube, path = self.kube, resource_path(self.api_version, self.plural, namespace)
        seen: set[Key] = set()
        token: str | None = None
        while True:
            query = {"limit": self.page_size, "continue": token}
            try:
                page = await kube.run(kube.request, "GET", path, None, query)
            except KubeError as e:
                if e.status == 410 and token is not None:
                    seen.clear()  # the continue token expired mid-list: from the start, consistently
                    token = None
                    continue
                raise
            kind = (page.get("kind") or "").removesuffix("List")
            for item in page.get("items") or []:
                # List items omit apiVersion and kind; watch events (and Events about the object) carry them.
                item.setdefault("apiVersion", self.api_version)
                if kind:
                    item.setdefault("kind", kind)
                meta = item.get("metadata") or {}
                seen.add((meta.get("namespace") or "", meta.get("name") or ""))
                self.on_event(None, item)
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                break
        for ns, name in vanished(self.known(), seen, namespace):
            self.on_event("DELETED", {"metadata": {"namespace": ns, "name": name}})
        self.lists += 1
        if not self.listed.is_set():
            self._scopes_listed += 1
            if self._scopes_listed >= max(1, len(self.namespaces)):
                self.listed.set()
        version: str = (page.get("metadata") or {}).get("resourceVersion") or ""
        return version

    # -- WATCH ------------------------------------------------------------------------

    async def _watch(self, namespace: str | None, version: str) -> str:
        """One watch request until the server ends it; the version to resume from."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        stream = watch.Watch()
        self.kube.requests_by_verb["WATCH"] += 1
        self.kube.requests += 1

        def finish(result: str | BaseException) -> None:
            if done.done():
                return
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        def read() -> None:
            latest = version
            try:
                for event in stream.stream(self._list_fn(), *self._list_args(namespace), **self._watch_kwargs(latest)):
                    obj = event.get("raw_object") or event.get("object") or {}
                    latest = (obj.get("metadata") or {}).get("resourceVersion") or latest
                    if event["type"] != "BOOKMARK":
                        loop.call_soon_threadsafe(self.on_event, event["type"], obj)
                result: str | BaseException = latest
            except client.ApiException as e:
                result = Expired() if e.status == 410 else e
            except Exception as e:  # noqa: BLE001 - handed to the loop, which logs it and resumes
                result = e
            with contextlib.suppress(RuntimeError):  # the loop closed: the operator is exiting
                loop.call_soon_threadsafe(finish, result)

        threading.Thread(target=read, name=f"watch-{self.plural}", daemon=True).start()
        try:
            return await done
        finally:
            stream.stop()  # unblocks the thread's read at once when cancelled

    def _list_fn(self) -> Callable[..., Any]:
        api = client.CustomObjectsApi(self.kube.api)
        return api.list_namespaced_custom_object if self.namespaces else api.list_cluster_custom_object

    def _list_args(self, namespace: str | None) -> tuple[str, ...]:
        group, version = self.api_version.split("/", 1)
        return (group, version, namespace, self.plural) if namespace is not None else (group, version, self.plural)

    def _watch_kwargs(self, version: str) -> dict[str, Any]:
        return {
            "resource_version": version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.watch_timeout_s,
            "_request_timeout": (10, self.watch_timeout_s + 30),
        }
