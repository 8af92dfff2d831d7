"""The worker's open catalog: turn an on-demand `owner/repo[@rev][:file]` name into a pinned hub adapter entry.

One hub look-up per name (huggingface_hub's `HfApi.model_info` with file sizes) decides, by `decide` (pure):

| refusal                                        | status | code                 |
|------------------------------------------------|--------|----------------------|
| owner or repo denied / not allowed by policy   | 403    | not_allowed          |
| repository or revision not found (or private)  | 404    | repo_not_found       |
| gated or private repo and no token allowed     | 403    | gated / private      |
| not tagged with the required tag               | 422    | missing_tag          |
| no or another base model                       | 422    | base_model_mismatch  |
| no safetensors weights, several, pickle only   | 422    | no_weights           |
| weight file over the size cap                  | 413    | adapter_too_large    |
| hub unreachable, 5xx, 429, malformed answer    | 502    | hub_unavailable      |

Accepted: the revision pinned to the commit the hub reported, the weight file chosen as diffusers does (or the named
one), its size within the cap, all before a byte of weights is downloaded. Answers are cached (positive and negative
TTLs, bounded, least recently used dropped first) and concurrent look-ups of one name share a single hub call, so a
flood of one bad id costs one look-up per TTL. Messages never quote the hub's answer.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from loraplex.api.open_catalog import HubRef, OnDemandNameError, OpenCatalogPolicy, parse_on_demand
from loraplex.api.routing_table import AdapterEntry, HubSource
from loraplex.egress import EgressRefused, check_host
from loraplex.families import family_of_model
from loraplex.hubmeta import check_hub_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")
TOKEN_ENV = "HF_TOKEN"  # the pool's hub token in the worker's environment (the operator's hubTokenSecret)
_REASON_STATUS = {
    "NotALora": (422, "missing_tag"),
    "BaseModelUnknown": (422, "base_model_mismatch"),
    "BaseModelMismatch": (422, "base_model_mismatch"),
    "BaseModelFamilyMismatch": (422, "base_model_mismatch"),
    "FileNotFound": (404, "file_not_found"),
    "UnsafeFormat": (422, "no_weights"),
    "NoWeights": (422, "no_weights"),
    "AmbiguousWeights": (422, "no_weights"),
    "NoCommit": (502, "hub_unavailable"),
}


class OpenCatalogError(Exception):
    """An on-demand adapter that is refused: the HTTP status, a stable code and a message naming the reason."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class TtlCache(Generic[T]):
    """Values that expire after their own TTL, at most `max_entries` (least recently used dropped). Not locked."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Any, tuple[float, T]] = OrderedDict()

    def get(self, key: Any, now: float) -> T | None:
        item = self._items.get(key)
        if item is None:
            return None
        if now >= item[0]:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: Any, value: T, ttl_s: float, now: float) -> None:
        if ttl_s <= 0:
            self._items.pop(key, None)
            return
        self._items[key] = (now + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def decide(
    info: Any, ref: HubRef, policy: OpenCatalogPolicy, pool: str, pool_models: list[str], max_bytes: int
) -> AdapterEntry:
    """The pinned entry for `ref` from the hub's model info (a ModelInfo or its JSON), or OpenCatalogError. Pure."""
    if _field(info, "disabled"):
        raise OpenCatalogError(403, "disabled", f"repository {ref.repo_id!r} is disabled on the hub")
    gated, private = _field(info, "gated"), _field(info, "private")
    if gated and not policy.use_token:
        raise OpenCatalogError(
            403, "gated", f"repository {ref.repo_id!r} is gated; this pool's open catalog may not use a hub token"
        )
    if private and not policy.use_token:
        raise OpenCatalogError(
            403, "private", f"repository {ref.repo_id!r} is private; this pool's open catalog may not use a hub token"
        )
    family = next((f for f in map(family_of_model, pool_models) if f), None)  # SDXL or FLUX when the id is known
    check = check_hub_metadata(
        info, [*pool_models, *policy.base_models], ref.filename, tag=policy.required_tag, pool_family=family
    )
    if not check.ok:
        status, code = _REASON_STATUS.get(check.reason, (422, "invalid_adapter"))
        raise OpenCatalogError(status, code, f"repository {ref.repo_id!r}: {check.message}")
    assert check.commit is not None and check.filename is not None
    cap = min(policy.max_file_bytes, max_bytes)
    if check.size is None:
        raise OpenCatalogError(502, "hub_unavailable", f"the hub reported no size for {check.filename!r}")
    if check.size > cap:
        raise OpenCatalogError(
            413, "adapter_too_large", f"{ref.repo_id}/{check.filename} is {check.size} bytes, over the cap of {cap}"
        )
    source = HubSource(
        repo=ref.repo_id,
        revision=check.commit,
        filename=check.filename,
        token_env=TOKEN_ENV if policy.use_token else None,
    )
    return AdapterEntry(pool=pool, source=source, revision=check.commit, on_demand=True)


def fetch_model_info(ref: HubRef, policy: OpenCatalogPolicy, timeout_s: float) -> Any:
    """Blocking: the hub's model info (with file sizes) for `ref`; OpenCatalogError for every failure."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf_errors

    endpoint = policy.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        import urllib.parse

        check_host(urllib.parse.urlsplit(endpoint).hostname or "")
    except EgressRefused as e:
        raise OpenCatalogError(502, "hub_unavailable", f"the hub endpoint is refused: {e}") from None
    token: str | bool = (os.environ.get(TOKEN_ENV) or False) if policy.use_token else False
    try:
        return HfApi(endpoint=endpoint).model_info(
            ref.repo_id, revision=ref.revision, token=token, files_metadata=True, timeout=timeout_s
        )
    except hf_errors.GatedRepoError:
        raise OpenCatalogError(
            403, "gated", f"repository {ref.repo_id!r} is gated (no access with this pool's token)"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise OpenCatalogError(
            404, "revision_not_found", f"revision {ref.revision!r} of {ref.repo_id!r} not found"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise OpenCatalogError(
            404, "repo_not_found", f"repository {ref.repo_id!r} not found (or not accessible)"
        ) from None
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise OpenCatalogError(403, "private", f"repository {ref.repo_id!r} is not accessible") from None
        raise OpenCatalogError(502, "hub_unavailable", f"the hub answered HTTP {status} for {ref.repo_id!r}") from None
    except Exception as e:  # noqa: BLE001 - httpx, OSError, a malformed answer: the type only, never the text
        raise OpenCatalogError(
            502, "hub_unavailable", f"cannot reach the hub for {ref.repo_id!r} ({type(e).__name__})"
        ) from None


@dataclass(frozen=True)
class _Outcome:
    entry: AdapterEntry | None
    error: OpenCatalogError | None


class OpenCatalog:
    """Resolve on-demand names for one pool: policy first, then one cached, single-flight hub look-up per name."""

    def __init__(
        self,
        policy: OpenCatalogPolicy,
        pool_models: list[str],
        max_adapter_bytes: int,
        timeout_s: float = 10.0,
        fetch: Callable[[HubRef, OpenCatalogPolicy, float], Any] = fetch_model_info,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.pool_models = pool_models
        self.max_adapter_bytes = max_adapter_bytes
        self.timeout_s = timeout_s
        self.fetch = fetch
        self.clock = clock
        self.cache: TtlCache[_Outcome] = TtlCache(policy.max_cached)
        self._inflight: dict[str, Future[_Outcome]] = {}
        self._lock = threading.Lock()
        self.lookups = 0  # hub calls made (tests, metrics)

    def resolve(self, name: str, pool: str) -> AdapterEntry:
        """Blocking: the pinned entry for an on-demand adapter name, or OpenCatalogError."""
        try:
            qualifier, ref = parse_on_demand(name)
        except OnDemandNameError as e:
            raise OpenCatalogError(400, "invalid_adapter_name", str(e)) from None
        if qualifier is not None or ref.name != name:
            raise OpenCatalogError(400, "invalid_adapter_name", "not a canonical on-demand adapter name")
        why = self.policy.refusal(ref)
        if why is not None:
            raise OpenCatalogError(403, "not_allowed", why)
        owner = False
        fut: Future[_Outcome] | None = None
        with self._lock:
            hit = self.cache.get(name, self.clock())
            if hit is None:
                fut = self._inflight.get(name)
                if fut is None:
                    fut = self._inflight[name] = Future()
                    owner = True
        if hit is None:
            assert fut is not None
            if owner:
                hit = self._look_up(ref, pool)
                with self._lock:
                    ttl = self.policy.positive_ttl_seconds if hit.entry else self.policy.negative_ttl_seconds
                    self.cache.put(name, hit, ttl, self.clock())
                    self._inflight.pop(name, None)
                fut.set_result(hit)
            else:
                hit = fut.result()
        if hit.error is not None:
            raise hit.error
        assert hit.entry is not None
        return hit.entry

    def _look_up(self, ref: HubRef, pool: str) -> _Outcome:
        self.lookups += 1
        try:
            info = self.fetch(ref, self.policy, self.timeout_s)
            return _Outcome(decide(info, ref, self.policy, pool, self.pool_models, self.max_adapter_bytes), None)
        except OpenCatalogError as e:
            log.info("open catalog: %s refused (%s): %s", ref.name, e.code, e.message)
            return _Outcome(None, e)
        except Exception as e:  # noqa: BLE001 - never leave the waiters hanging
            log.exception("open catalog: looking up %s failed", ref.name)
            return _Outcome(None, OpenCatalogError(502, "hub_unavailable", f"look-up failed ({type(e).__name__})"))
