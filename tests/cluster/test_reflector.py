"""The operator's reflector against the real apiserver: paged LIST, the watch, a re-LIST that removes what is gone.

No operator process here: the reflector and an adapter store run in this test's event loop,
scoped to the test's namespace, with the test's admin credentials (the operator tests cover RBAC).
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.operator_burst import adapter_body
from loraplex_operator import constants as c
from loraplex_operator.clients.kube import Kube, load_configuration
from loraplex_operator.controllers.reflector import Reflector
from loraplex_operator.controllers.stores import AdapterStore


async def _until(what: str, check: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_reflector_lists_in_pages_watches_and_relists(crds: None, kube: Kube, namespace: str) -> None:
    for i in range(7):
        kube.create(adapter_body(namespace, f"a{i}", "tiny"))

    async def scenario() -> None:
        client = Kube(load_configuration(), workers=2)
        store = AdapterStore()
        events: list[tuple[str | None, str, str | None]] = []  # (type, name, its "seen" label)

        def on_event(event_type: str | None, body: dict[str, Any]) -> None:
            labels = body["metadata"].get("labels") or {}
            events.append((event_type, body["metadata"]["name"], labels.get("seen")))
            store.apply(event_type, body)

        reflector = Reflector(
            client, c.API_VERSION, c.ADAPTER_PLURAL, [namespace], on_event, store.keys, page_size=3, watch_timeout_s=5
        )
        task = asyncio.create_task(reflector.run())
        try:
            await asyncio.wait_for(reflector.listed.wait(), 20)
            assert sorted(e for e in events if e[0] is None) == sorted((None, f"a{i}", None) for i in range(7))
            assert client.requests_by_verb["GET"] == 3  # 7 objects in pages of 3
            listed = store.snapshots(namespace)
            assert all(s["metadata"]["namespace"] == namespace for s in listed)
            events.clear()

            # The watch: a create, a label change, a delete, in order; and it outlives the server's timeout (5 s).
            # (The session's operator may write these adapters' status too: more MODIFIED events, same order.)
            await asyncio.to_thread(kube.create, adapter_body(namespace, "late", "tiny"))
            await asyncio.sleep(6)
            patch = {"metadata": {"labels": {"seen": "yes"}}}
            await asyncio.to_thread(kube.merge_patch, c.API_VERSION, c.ADAPTER_PLURAL, namespace, "late", patch)
            await asyncio.to_thread(kube.delete, c.API_VERSION, c.ADAPTER_PLURAL, namespace, "a0")
            await _until("the delete's event", lambda: ("DELETED", "a0") in [e[:2] for e in events])
            ours = [e for e in events if e[1] == "late" or e[0] == "DELETED"]
            assert ours[0] == ("ADDED", "late", None)
            assert ours.index(("MODIFIED", "late", "yes")) < ours.index(("DELETED", "a0", None))
            assert [e for e in ours if e[0] == "DELETED"] == [("DELETED", "a0", None)]
            assert "a0" not in [s["metadata"]["name"] for s in store.snapshots(namespace)]
            assert client.requests_by_verb["WATCH"] >= 2  # resumed after the server ended the first one
            assert reflector.lists == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        # While nobody watches: one deleted, one created. A fresh LIST brings the store back to the cluster.
        await asyncio.to_thread(kube.delete, c.API_VERSION, c.ADAPTER_PLURAL, namespace, "a1")
        await asyncio.to_thread(kube.create, adapter_body(namespace, "while-away", "tiny"))
        events.clear()
        again = Reflector(client, c.API_VERSION, c.ADAPTER_PLURAL, [namespace], on_event, store.keys, page_size=3)
        task = asyncio.create_task(again.run())
        try:
            await asyncio.wait_for(again.listed.wait(), 20)
            assert ("DELETED", "a1", None) in events and (None, "while-away", None) in events
            names = sorted(s["metadata"]["name"] for s in store.snapshots(namespace))
            assert names == sorted(["late", "while-away", *(f"a{i}" for i in range(2, 7))])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            client.close()

    asyncio.run(scenario())
