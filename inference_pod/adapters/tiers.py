"""The adapter tiers of one worker: GPU slots -> host RAM -> local disk -> source.

Each tier has a budget and LRU eviction; pinned adapters are exempt. Misses
fall through to the next tier, and whatever is fetched is kept in every tier
above. A bad adapter (unreadable, wrong base model, over a limit) is
remembered by its source key, so it fails fast until its source changes,
and it never takes the worker down.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inference_pod.adapters.formats import AdapterFormatError, load_adapter_file
from inference_pod.adapters.lru import BudgetExceeded, BudgetLRU
from inference_pod.adapters.sources import AdapterSourceError, SourcePolicy, fetch_to_disk, source_key
from inference_pod.families import SDXL, ModelFamily
from inference_pod.slots.engine import AdapterMismatchError, PreparedAdapter, SlotEngine
from inference_pod.slots.files import read_prepared, save_prepared
from loraplex.api.routing_table import AdapterEntry, PathSource

log = logging.getLogger(__name__)

TIERS = ("gpu", "ram", "disk", "source")


def cold_tier(in_job: str, fetched: str | None) -> str:
    """The tier a request's adapter came from: the GPU job's own swap (`in_job`), unless the fetch beside the GPU,
    which this request waited for, brought it from the disk or the source (the job then finds it in RAM)."""
    if fetched in ("disk", "source") and TIERS.index(fetched) > TIERS.index(in_job):
        return fetched
    return in_job


class AdapterError(Exception):
    """An adapter that cannot be used: `status` is the HTTP status to answer with."""

    def __init__(self, name: str, status: int, message: str) -> None:
        super().__init__(f"adapter {name!r}: {message}")
        self.name = name
        self.status = status
        self.message = message


@dataclass
class SwapResult:
    slot: int
    tier: str  # where the adapter was found: gpu, ram, disk or source
    seconds: float


@dataclass
class TierBudgets:
    gpu_slots: int = 4
    ram_bytes: int = 2 << 30
    disk_bytes: int = 20 << 30
    max_adapter_bytes: int = 512 << 20


class DiskTier:
    """Fetched adapter files in one directory, evicted least recently used first."""

    def __init__(self, directory: Path, budget: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lru: BudgetLRU[Path] = BudgetLRU(budget)
        for p in sorted(self.dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime):
            try:
                self._admit(p)
            except BudgetExceeded:
                p.unlink(missing_ok=True)

    def _admit(self, path: Path, pinned: bool = False) -> None:
        for _, victim in self.lru.put(str(path), path, path.stat().st_size, pinned=pinned):
            victim.unlink(missing_ok=True)

    def track(self, path: Path, pinned: bool = False) -> None:
        if path.parent != self.dir:
            return  # a local path source is its own disk tier
        if str(path) in self.lru:
            self.lru.get(str(path))
            self.lru.set_pinned(str(path), pinned)
        else:
            self._admit(path, pinned)


class AdapterTiers:
    def __init__(
        self,
        engine: SlotEngine,
        budgets: TierBudgets,
        disk_dir: Path,
        unet_config=None,
        prefetch_threads: int = 2,
        policy: SourcePolicy | None = None,
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
        family: ModelFamily = SDXL,
    ) -> None:
        self.engine = engine
        self.family = family
        self.policy = policy or SourcePolicy()
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        # source key -> (monotonic time before which a transient failure is not retried, its delay, reason)
        self._retry: dict[str, tuple[float, float, str]] = {}
        self.budgets = budgets
        self.unet_config = unet_config
        self.disk = DiskTier(disk_dir, budgets.disk_bytes)
        self.ram: BudgetLRU[PreparedAdapter] = BudgetLRU(budgets.ram_bytes)
        self.slots: BudgetLRU[int] = BudgetLRU(min(budgets.gpu_slots, engine.n_slots))
        self.free_slots = list(range(self.slots.budget))
        self.catalog: dict[str, AdapterEntry] = {}
        self.bad: dict[str, str] = {}  # source key -> reason
        self._bad_status: dict[str, int] = {}
        self._keys: dict[str, str] = {}  # adapter name -> source key it was loaded from
        self._lock = threading.RLock()
        self._inflight: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(prefetch_threads, thread_name_prefix="adapter-fetch")

    # -- catalog ----------------------------------------------------------------------------------

    def register(self, name: str, entry: AdapterEntry) -> None:
        with self._lock:
            old = self.catalog.get(name)
            self.catalog[name] = entry
            if old is not None and old != entry:
                # New source or revision: drop what we hold of the old bytes.
                self.ram.pop(name)
                slot = self.slots.pop(name)
                if slot is not None:
                    self.free_slots.append(slot)
            self.ram.set_pinned(name, entry.pinned)
            self.slots.set_pinned(name, entry.pinned)

    def entry(self, name: str) -> AdapterEntry:
        entry = self.catalog.get(name)
        if entry is None:
            raise AdapterError(name, 404, "unknown adapter: not in this worker's routing table")
        return entry

    def _key(self, name: str, entry: AdapterEntry) -> str:
        key = source_key(name, entry)
        if isinstance(entry.source, PathSource):
            try:
                st = Path(entry.source.path).stat()  # follows symlinks: a re-pointed link is a change too
                key += f":{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
            except OSError:
                pass
        return key

    def check_fresh(self, name: str) -> bool:
        """Drop a resident path-source adapter whose file changed (one stat); True if it was dropped."""
        with self._lock:
            entry = self.catalog.get(name)
            loaded = self._keys.get(name)
            if entry is None or loaded is None or not isinstance(entry.source, PathSource):
                return False
            if self._key(name, entry) == loaded:
                return False
            log.info("adapter %r: its file %s changed; reloading", name, entry.source.path)
            self._keys.pop(name, None)
            self.ram.pop(name)
            slot = self.slots.pop(name)
            if slot is not None:
                self.free_slots.append(slot)
            return True

    # -- RAM tier (any thread) ----------------------------------------------------------------------

    def prefetch(self, name: str) -> Future:
        """Start bringing the adapter into RAM in the background; returns a Future of the tier it came from."""
        with self._lock:
            fut = self._inflight.get(name)
            if fut is not None:
                return fut
            if name in self.ram or name in self.slots:
                done: Future = Future()
                done.set_result("gpu" if name in self.slots else "ram")
                return done
            fut = self._pool.submit(self._load_to_ram, name)
            self._inflight[name] = fut
            fut.add_done_callback(lambda _f: self._forget_inflight(name))
            return fut

    def _forget_inflight(self, name: str) -> None:
        with self._lock:
            self._inflight.pop(name, None)

    def _prepared_path(self, key: str) -> Path:
        """Where the adapter's slot-layout copy lives in the disk tier (tied to this engine's layout)."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.disk.dir / f"{digest}.{self.engine.fingerprint}.slot.safetensors"

    def _read_prepared(self, path: Path) -> PreparedAdapter | None:
        try:
            return read_prepared(self.engine, path)
        except (OSError, ValueError) as e:  # a stale or damaged copy: prepare from the original again
            log.warning("discarding prepared adapter file %s: %s", path.name, e)
            path.unlink(missing_ok=True)
            return None

    def _load_to_ram(self, name: str) -> str:
        entry = self.entry(name)
        key = self._key(name, entry)
        with self._lock:
            if key in self.bad:
                raise AdapterError(name, self._bad_status.get(key, 422), self.bad[key])
            retry = self._retry.get(key)
            if retry is not None and time.monotonic() < retry[0]:
                wait = retry[0] - time.monotonic()
                raise AdapterError(name, 502, f"{retry[2]} (transient; retried in {wait:.1f}s)")
        prepared_path = self._prepared_path(key)
        # After a restart the disk tier still holds the slot-layout copy: one read, no key conversion.
        prepared = self._read_prepared(prepared_path) if prepared_path.exists() else None
        tier = "disk"
        if prepared is None:
            tier, prepared = self._prepare_from_source(name, entry, key, prepared_path)
        with self._lock:
            self.disk.track(prepared_path, pinned=entry.pinned)
            try:
                self.ram.put(name, prepared, prepared.nbytes, pinned=entry.pinned)
            except BudgetExceeded as e:
                raise AdapterError(name, 507, f"does not fit the RAM tier: {e}") from e
            self._keys[name] = key
        return tier

    def _prepare_from_source(
        self, name: str, entry: AdapterEntry, key: str, prepared_path: Path
    ) -> tuple[str, PreparedAdapter]:
        """Fetch, convert, validate and prepare; write the slot-layout copy; return (tier it came from, adapter)."""
        try:
            was_cached = (self.disk.dir / f"{source_key(name, entry)}.safetensors").exists() or isinstance(
                entry.source, PathSource
            )
            path = fetch_to_disk(name, entry, self.disk.dir, self.budgets.max_adapter_bytes, policy=self.policy)
            lora = load_adapter_file(path, self.unet_config, family=self.family)
            if lora.nbytes > self.budgets.max_adapter_bytes:
                raise AdapterMismatchError(f"{lora.nbytes} bytes of weights, over the limit")
            prepared = self.engine.prepare(lora)
        except AdapterSourceError as e:
            if e.permanent:
                self._mark_bad(name, key, 422, str(e))
                raise AdapterError(name, 422, str(e)) from e
            self._transient(name, key, str(e))
            raise AdapterError(name, 502, str(e)) from e
        except (AdapterFormatError, AdapterMismatchError) as e:
            self._mark_bad(name, key, 422, str(e))
            raise AdapterError(name, 422, str(e)) from e
        save_prepared(self.engine, prepared, prepared_path)
        with self._lock:
            self._retry.pop(key, None)
            self.disk.track(path, pinned=entry.pinned)
        return ("disk" if was_cached else "source"), prepared

    def _transient(self, name: str, key: str, reason: str) -> None:
        """A failure that says nothing about the adapter (network, truncated transfer): retry later, backing off."""
        with self._lock:
            prev = self._retry.get(key)
            delay = self.retry_base_s if prev is None else min(self.retry_max_s, prev[1] * 2)
            self._retry[key] = (time.monotonic() + delay, delay, reason)
        log.warning("adapter %r: fetch failed (transient, retry in %.0fs): %s", name, delay, reason)

    def mark_bad(self, name: str, status: int, reason: str) -> None:
        """Remember the adapter's current source as bad (e.g. it made the output non-finite)."""
        with self._lock:
            entry = self.catalog.get(name)
            key = self._keys.get(name) or (self._key(name, entry) if entry else None)
            if key is None:
                return
            self._mark_bad(name, key, status, reason)
            self.ram.pop(name)
            slot = self.slots.pop(name)
            if slot is not None:
                self.free_slots.append(slot)

    def _mark_bad(self, name: str, key: str, status: int, reason: str) -> None:
        with self._lock:
            self.bad[key] = reason
            self._bad_status[key] = status
        log.warning("adapter %r marked bad: %s", name, reason)

    # -- GPU slots (the GPU job thread only) ---------------------------------------------------------

    def ensure_in_slot(self, name: str, keep: frozenset[str] = frozenset()) -> SwapResult:
        """Make the adapter resident in a slot; `keep` names adapters the same request uses."""
        t0 = time.perf_counter()
        slot = self.slots.get(name)
        if slot is not None:
            return SwapResult(slot, "gpu", time.perf_counter() - t0)
        tier = "ram"
        prepared = self.ram.get(name)
        if prepared is None:
            tier = self.prefetch(name).result()
            prepared = self.ram.get(name)
            if prepared is None:  # evicted between fetch and use: take it again
                tier = self._load_to_ram(name)
                prepared = self.ram.get(name)
        assert prepared is not None
        with self._lock:
            entry = self.catalog[name]
            try:
                evicted = self.slots.plan_evictions(1, exclude=keep)
            except BudgetExceeded as e:
                raise AdapterError(name, 503, f"no free GPU slot: {e}") from e
            for victim in evicted:
                self.free_slots.append(self.slots.pop(victim))  # type: ignore[arg-type]
            slot = self.free_slots.pop(0)
            self.engine.load(slot, prepared)
            self.slots.put(name, slot, 1, pinned=entry.pinned)
        return SwapResult(slot, tier, time.perf_counter() - t0)

    # -- introspection --------------------------------------------------------------------------------

    def tier_of(self, name: str) -> str:
        if name in self.slots:
            return "gpu"
        if name in self.ram:
            return "ram"
        entry = self.catalog.get(name)
        if entry is None:
            return "unknown"
        if isinstance(entry.source, PathSource) or (self.disk.dir / f"{source_key(name, entry)}.safetensors").exists():
            return "disk"
        return "source"

    def describe(self) -> list[dict]:
        with self._lock:
            out = []
            for name, entry in sorted(self.catalog.items()):
                key = self._key(name, entry)
                out.append(
                    {
                        "name": name,
                        "tier": self.tier_of(name),
                        "slot": self.slots.get(name, touch=False),
                        "pinned": entry.pinned,
                        "bad": self.bad.get(key),
                    }
                )
            return out

    def resident(self, limit: int) -> dict:
        """Which adapters this worker holds, each at its highest tier (gpu > ram > disk), for `/v1/resident`.

        `disk` means the adapter's prepared copy is in this worker's disk tier (a path source once read here
        counts too). At most `limit` names in all (gpu first, then ram, then disk, each sorted); `counts` are
        always the full numbers and `truncated` says when names were left out, so a pod with thousands of
        adapters on disk still answers with a bounded document.
        """
        with self._lock:
            gpu = sorted(self.slots.keys())
            held = set(gpu)
            ram = sorted(n for n in self.ram.keys() if n not in held)  # noqa: SIM118 - BudgetLRU has no __iter__
            held.update(ram)
            disk = []
            for name, entry in sorted(self.catalog.items()):
                if name in held:
                    continue
                key = self._keys.get(name) or self._key(name, entry)
                if str(self._prepared_path(key)) in self.disk.lru:
                    disk.append(name)
        counts = {"gpu": len(gpu), "ram": len(ram), "disk": len(disk)}
        out: dict[str, list[str]] = {}
        room = max(0, limit)
        for tier, names in (("gpu", gpu), ("ram", ram), ("disk", disk)):
            out[tier] = names[:room]
            room -= len(out[tier])
        return {**out, "counts": counts, "truncated": sum(counts.values()) > max(0, limit)}

    def bytes_by_tier(self) -> dict[str, int]:
        return {"gpu": len(self.slots) * self.engine.slot_nbytes, "ram": self.ram.used, "disk": self.disk.lru.used}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
