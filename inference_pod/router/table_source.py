"""Where the router's RoutingTable comes from: a file, or the operator's ConfigMaps.

A source runs in its own thread and keeps the last good table: an update that
fails to parse is logged, reported to error listeners, and ignored, so a bad
write never takes routing down. Listeners are called from the source's thread
after every accepted change; `AsyncTable` bridges that into an asyncio loop.

- `FileTableSource`: polls the file's (mtime, size, inode) every 0.5 s; no
  inotify, so it works on any filesystem, including a mounted ConfigMap.
- `ConfigMapTableSource`: lists and watches the ConfigMaps of one namespace
  labelled `loraplex.io/routing-table=true`; each holds a partial table under
  the data key `table.json`, joined (`ShardMerger`: only changed shards are re-parsed) in ConfigMap-name
  order. Watch events are coalesced (the operator writes shards in bursts),
  a 410 Gone re-lists at once, other errors re-list with backoff.
  A drop from a non-empty table to an empty one (every shard deleted,
  unlabelled, or emptied by hand) is refused like a malformed update, unless
  a shard carries the operator's `loraplex.io/table-empty` marker (the
  operator writes it when the namespace really has no pool left): the old
  table keeps routing until the operator restores the shards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from loraplex.api.names import ANNOTATION_TABLE_EMPTY, TABLE_DATA_KEY, TABLE_LABEL_SELECTOR
from loraplex.api.routing_table import RoutingTable, ShardMerger, TableError, parse_table

log = logging.getLogger("loraplex.table")


Listener = Callable[[RoutingTable], None]
ErrorListener = Callable[[str], None]


class TableSource:
    """Holds the current table and notifies listeners; subclasses feed it from a thread."""

    name = "table"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: RoutingTable | None = None
        self._listeners: list[Listener] = []
        self._error_listeners: list[ErrorListener] = []
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_error: str | None = None
        self.refused_empty = 0  # unexplained drops to an empty table refused (each also an error: metrics)
        self.last_reload_s: float | None = None  # parse + merge time of the last accepted update

    @property
    def table(self) -> RoutingTable | None:
        """The last good table, or None until one has loaded."""
        return self._table

    def add_listener(self, callback: Listener) -> None:
        """Call `callback(table)` (from the source's thread) after every accepted change."""
        with self._lock:
            self._listeners.append(callback)

    def add_error_listener(self, callback: ErrorListener) -> None:
        """Call `callback(message)` (from the source's thread) for every rejected update."""
        with self._lock:
            self._error_listeners.append(callback)

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _publish(self, table: RoutingTable) -> None:
        with self._lock:
            self._table = table
            self.last_error = None
            listeners = list(self._listeners)
        self._loaded.set()
        log.info(
            "routing table generation %s loaded from %s: %d pools, %d adapters",
            table.generation,
            self.name,
            len(table.pools),
            len(table.adapters),
        )
        for cb in listeners:
            try:
                cb(table)
            except Exception:  # a broken listener must not stop the source
                log.exception("routing table listener failed")

    def _reject(self, message: str) -> None:
        with self._lock:
            self.last_error = message
            listeners = list(self._error_listeners)
        log.error("routing table update from %s rejected, keeping the last good table: %s", self.name, message)
        for cb in listeners:
            try:
                cb(message)
            except Exception:
                log.exception("routing table error listener failed")


class FileTableSource(TableSource):
    """A whole table in one JSON file, re-read when its mtime, size or inode changes."""

    def __init__(self, path: str | os.PathLike[str], poll_interval: float = 0.5) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.name = self.path
        self.poll_interval = poll_interval
        self._sig: tuple[int, int, int] | None = None
        self._content: bytes | None = None
        self._missing_logged = False

    def start(self) -> None:
        self.poll()  # the first load is synchronous: ready as soon as start() returns
        self._spawn(self._run, "table-file")

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll()
            except Exception:
                log.exception("polling %s failed", self.path)

    def poll(self) -> bool:
        """Re-read the file if it changed; True when a new table was accepted."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._missing_logged:
                log.warning("routing table file %s does not exist (yet)", self.path)
                self._missing_logged = True
            self._sig = None
            return False
        self._missing_logged = False
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        if sig == self._sig:
            return False
        self._sig = sig
        with open(self.path, "rb") as f:
            content = f.read()
        if content == self._content:
            return False
        self._content = content
        started = time.perf_counter()
        try:
            table = parse_table(content)
        except TableError as e:
            self._reject(str(e))
            return False
        self.last_reload_s = time.perf_counter() - started
        self._publish(table)
        return True


def _kube_core_api() -> Any:
    """A CoreV1Api from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client, config  # imported here: slow, and only this source needs it

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CoreV1Api()


class ConfigMapTableSource(TableSource):
    """Shards of the table in labelled ConfigMaps, followed through a Kubernetes watch."""

    def __init__(
        self,
        namespace: str,
        label_selector: str = TABLE_LABEL_SELECTOR,
        api: Any = None,
        debounce_s: float = 0.1,
        watch_timeout_s: int = 240,
        max_backoff_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.namespace = namespace
        self.label_selector = label_selector
        self.name = f"configmaps {namespace}/{label_selector}"
        self.debounce_s = debounce_s
        self.watch_timeout_s = watch_timeout_s
        self.max_backoff_s = max_backoff_s
        self._api = api
        self._shards: dict[str, str | None] = {}
        self._marked_empty: set[str] = set()  # shards carrying the operator's "empty on purpose" marker
        self._merged_input: tuple[list[tuple[str, str | None]], bool] | None = None
        self._merger = ShardMerger()  # re-parses only the shards that changed
        self._dirty = threading.Event()
        self._watch: Any = None

    def start(self) -> None:
        if self._api is None:
            self._api = _kube_core_api()
        self._spawn(self._watch_loop, "table-watch")
        self._spawn(self._merge_loop, "table-merge")

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._watch is not None:
            self._watch.stop()  # takes effect at the next event or watch timeout
        for t in self._threads:
            t.join(timeout=0.5)

    # -- state: shard bookkeeping (no I/O) --------------------------------

    def replace_all(self, configmaps: list[Any]) -> None:
        """Set the shards from a full list (V1ConfigMap objects), then merge now."""
        with self._lock:
            self._shards = {cm.metadata.name: (cm.data or {}).get(TABLE_DATA_KEY) for cm in configmaps}
            self._marked_empty = {cm.metadata.name for cm in configmaps if _marked_empty(cm)}
        self.merge()

    def apply_event(self, kind: str, cm: Any) -> bool:
        """Apply one watch event; True when the shard set changed (a merge is due)."""
        name = cm.metadata.name
        with self._lock:
            if kind == "DELETED":
                self._marked_empty.discard(name)
                if name not in self._shards:
                    return False
                del self._shards[name]
                return True
            if kind in ("ADDED", "MODIFIED"):
                data = (cm.data or {}).get(TABLE_DATA_KEY)
                marked = _marked_empty(cm)
                if name in self._shards and self._shards[name] == data and (name in self._marked_empty) == marked:
                    return False  # e.g. another annotation changed
                self._shards[name] = data
                if marked:
                    self._marked_empty.add(name)
                else:
                    self._marked_empty.discard(name)
                return True
        return False

    def merge(self) -> bool:
        """Join the current shards; publish if they changed and parse. True when published."""
        with self._lock:
            shards = sorted(self._shards.items())
            marked = bool(self._marked_empty & set(self._shards))
        if (shards, marked) == self._merged_input:
            return False
        self._merged_input = (shards, marked)
        missing = [name for name, data in shards if data is None]
        if missing:
            self._reject(f"ConfigMap(s) {', '.join(missing)} have no {TABLE_DATA_KEY!r} key")
            return False
        started = time.perf_counter()
        try:
            table = self._merger.merge([data for _, data in shards if data is not None])
        except TableError as e:
            names = ", ".join(name for name, _ in shards)
            self._reject(f"{e} (shards in order: {names})")
            return False
        current = self._table
        if current is not None and not _is_empty(current) and _is_empty(table) and not marked:
            self.refused_empty += 1
            what = f"{len(shards)} shard(s), none marked {ANNOTATION_TABLE_EMPTY}" if shards else "no shard left"
            self._reject(
                f"refusing to drop from generation {current.generation} ({len(current.pools)} pools, "
                f"{len(current.adapters)} adapters) to an empty table ({what}): shards deleted or emptied "
                "by hand? the operator restores them"
            )
            return False
        self.last_reload_s = time.perf_counter() - started
        self._publish(table)
        return True

    # -- threads -----------------------------------------------------------

    def _merge_loop(self) -> None:
        while not self._stop.is_set():
            if not self._dirty.wait(0.5) or self._stop.is_set():
                continue
            self._stop.wait(self.debounce_s)  # let the rest of a burst of writes arrive
            self._dirty.clear()
            try:
                self.merge()
            except Exception:
                log.exception("merging routing table shards failed")

    def _watch_loop(self) -> None:
        from kubernetes.client.exceptions import ApiException

        backoff = 0.5
        while not self._stop.is_set():
            try:
                rv = self._list()
                backoff = 0.5
                while not self._stop.is_set():
                    rv = self._watch_once(rv)
            except ApiException as e:
                if e.status == 410:  # our resourceVersion expired: re-list at once
                    log.info("routing table watch expired (410 Gone); re-listing")
                    continue
                log.warning("routing table watch failed (%s %s); retrying in %.1fs", e.status, e.reason, backoff)
            except Exception as e:
                log.warning("routing table watch failed (%s); retrying in %.1fs", e, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _list(self) -> str:
        resp = self._api.list_namespaced_config_map(
            self.namespace, label_selector=self.label_selector, _request_timeout=30
        )
        self.replace_all(list(resp.items))
        return resp.metadata.resource_version

    def _watch_once(self, rv: str) -> str:
        from kubernetes import watch

        w = self._watch = watch.Watch()
        for event in w.stream(
            self._api.list_namespaced_config_map,
            self.namespace,
            label_selector=self.label_selector,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout_s,
            _request_timeout=self.watch_timeout_s + 30,
        ):
            if self._stop.is_set():
                w.stop()
                break
            kind = event.get("type")
            if kind == "BOOKMARK":
                continue
            if self.apply_event(kind, event["object"]):
                self._dirty.set()
        # The stream ended (server-side timeout): resume from the last version seen.
        return w.resource_version or rv


def _is_empty(table: RoutingTable) -> bool:
    return not table.pools and not table.adapters


def _marked_empty(cm: Any) -> bool:
    annotations = getattr(cm.metadata, "annotations", None) or {}
    return annotations.get(ANNOTATION_TABLE_EMPTY) == "true"


class AsyncTable:
    """A TableSource seen from an asyncio loop: `.table`, and `await wait_changed(timeout)`."""

    def __init__(self, source: TableSource, loop: asyncio.AbstractEventLoop) -> None:
        self._event = asyncio.Event()
        self._loop = loop
        source.add_listener(self._from_thread)  # register before reading: no update is missed
        self.table: RoutingTable | None = source.table
        self.on_change: list[Listener] = []

    def _from_thread(self, table: RoutingTable) -> None:
        self._loop.call_soon_threadsafe(self._set, table)

    def _set(self, table: RoutingTable) -> None:
        self.table = table
        for cb in self.on_change:
            cb(table)
        self._event.set()
        self._event = asyncio.Event()

    async def wait_changed(self, timeout: float) -> bool:
        """Wait for the next accepted table; False on timeout."""
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True
