"""The worker's open catalog, pure parts: the decision on a repo's metadata, the TTL cache, single-flight look-ups."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from inference_pod.adapters.open_catalog import OpenCatalog, OpenCatalogError, TtlCache, decide
from loraplex.api.open_catalog import HubRef, OpenCatalogPolicy

SHA = "0123456789abcdef0123456789abcdef01234567"
POLICY = OpenCatalogPolicy(enabled=True, base_models=("org/tiny-base",), max_file_bytes=1000)
REF = HubRef("alice", "ink")


def info(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "alice/ink",
        "sha": SHA,
        "private": False,
        "gated": False,
        "tags": ["lora", "diffusers", "base_model:adapter:org/tiny-base"],
        "cardData": {"base_model": "org/tiny-base"},
        "siblings": [
            {"rfilename": "README.md", "size": 10},
            {"rfilename": "pytorch_lora_weights.safetensors", "size": 500},
            {"rfilename": "other.safetensors", "size": 400},
        ],
    }
    doc.update(over)
    return doc


def refused(doc: dict[str, Any], ref: HubRef = REF, policy: OpenCatalogPolicy = POLICY) -> OpenCatalogError:
    with pytest.raises(OpenCatalogError) as e:
        decide(doc, ref, policy, "tiny", ["tiny"], 1 << 20)
    return e.value


def test_accepted_repo_is_pinned_to_its_commit_with_the_diffusers_file() -> None:
    entry = decide(info(), REF, POLICY, "tiny", ["tiny"], 1 << 20)
    assert entry.on_demand and entry.pool == "tiny" and entry.revision == SHA
    assert entry.source.type == "hub"
    assert (entry.source.repo, entry.source.revision, entry.source.filename) == (
        "alice/ink",
        SHA,
        "pytorch_lora_weights.safetensors",
    )
    assert entry.source.token_env is None  # no token unless the policy allows one
    named = decide(info(), HubRef("alice", "ink", "main", "other.safetensors"), POLICY, "tiny", ["tiny"], 1 << 20)
    assert named.source.filename == "other.safetensors"  # type: ignore[union-attr]
    with_token = decide(info(private=True), REF, POLICY.model_copy(update={"use_token": True}), "t", ["t"], 1 << 20)
    assert with_token.source.token_env == "HF_TOKEN"  # type: ignore[union-attr]


def test_base_model_from_the_adapter_relation_tag_alone() -> None:
    doc = info(cardData={}, tags=["lora", "base_model:adapter:org/tiny-base"])
    assert decide(doc, REF, POLICY, "tiny", ["tiny"], 1 << 20).revision == SHA


@pytest.mark.parametrize(
    ("doc", "status", "code"),
    [
        (info(gated="auto"), 403, "gated"),
        (info(private=True), 403, "private"),
        (info(disabled=True), 403, "disabled"),
        (info(tags=["diffusers"]), 422, "missing_tag"),
        (info(cardData={"base_model": "sd15"}, tags=["lora", "base_model:adapter:sd15"]), 422, "base_model_mismatch"),
        (info(cardData={}, tags=["lora"]), 422, "base_model_mismatch"),
        (info(siblings=[{"rfilename": "w.bin", "size": 1}]), 422, "no_weights"),
        (info(siblings=[{"rfilename": "a.safetensors", "size": 1}, {"rfilename": "b.safetensors", "size": 1}]), 422,
         "no_weights"),
        (info(siblings=[{"rfilename": "pytorch_lora_weights.safetensors", "size": 5000}]), 413, "adapter_too_large"),
        (info(siblings=[{"rfilename": "pytorch_lora_weights.safetensors"}]), 502, "hub_unavailable"),
        (info(sha="main"), 502, "hub_unavailable"),
    ],
)  # fmt: skip
def test_refusals_name_the_reason(doc: dict[str, Any], status: int, code: str) -> None:
    e = refused(doc)
    assert (e.status, e.code) == (status, code)
    assert "alice" in e.message or "pytorch" in e.message or "size" in e.message


def test_named_file_missing_and_tag_configurable() -> None:
    assert refused(info(), HubRef("alice", "ink", "main", "nope.safetensors")).status == 404
    style = POLICY.model_copy(update={"required_tag": "style"})
    assert refused(info(), policy=style).code == "missing_tag"
    assert decide(info(tags=["style", "base_model:adapter:org/tiny-base"]), REF, style, "t", [], 1 << 20)


def test_ttl_cache_expires_and_is_bounded() -> None:
    c: TtlCache[str] = TtlCache(2)
    c.put("a", "A", 10, now=0)
    c.put("b", "B", 1, now=0)
    assert c.get("a", now=5) == "A" and c.get("b", now=5) is None
    c.put("c", "C", 10, now=5)
    c.put("d", "D", 10, now=5)  # over 2: the least recently used ("a") goes
    assert c.get("a", now=6) is None and c.get("d", now=6) == "D" and len(c) == 2
    c.put("d", "D", 0, now=6)  # a zero TTL caches nothing
    assert c.get("d", now=6) is None


class FakeFetch:
    def __init__(self, doc: dict[str, Any] | Exception, delay: float = 0.0) -> None:
        self.doc, self.delay, self.calls = doc, delay, 0
        self.lock = threading.Lock()

    def __call__(self, ref: HubRef, policy: OpenCatalogPolicy, timeout_s: float) -> Any:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        if isinstance(self.doc, Exception):
            raise self.doc
        return self.doc


def catalog(fetch: FakeFetch, policy: OpenCatalogPolicy = POLICY, clock: list[float] | None = None) -> OpenCatalog:
    now = clock if clock is not None else [0.0]
    return OpenCatalog(policy, ["tiny"], 1 << 20, fetch=fetch, clock=lambda: now[0])


def test_positive_and_negative_answers_are_cached_for_their_ttls() -> None:
    now = [0.0]
    good = FakeFetch(info())
    oc = catalog(good, POLICY.model_copy(update={"positive_ttl_seconds": 100, "negative_ttl_seconds": 10}), now)
    for _ in range(5):
        assert oc.resolve("alice/ink", "tiny").revision == SHA
    assert good.calls == 1
    now[0] = 101
    oc.resolve("alice/ink", "tiny")
    assert good.calls == 2
    bad = FakeFetch(info(tags=[]))
    oc = catalog(bad, POLICY.model_copy(update={"negative_ttl_seconds": 10}), now)
    for _ in range(5):
        with pytest.raises(OpenCatalogError):
            oc.resolve("alice/ink", "tiny")
    assert bad.calls == 1
    now[0] += 11
    with pytest.raises(OpenCatalogError):
        oc.resolve("alice/ink", "tiny")
    assert bad.calls == 2


def test_concurrent_look_ups_of_one_name_share_one_hub_call() -> None:
    slow = FakeFetch(OpenCatalogError(502, "hub_unavailable", "down"), delay=0.3)
    oc = OpenCatalog(POLICY, ["tiny"], 1 << 20, fetch=slow)
    errors: list[int] = []

    def one() -> None:
        try:
            oc.resolve("alice/ink", "tiny")
        except OpenCatalogError as e:
            errors.append(e.status)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert slow.calls == 1 and errors == [502] * 20


def test_policy_and_name_are_checked_before_any_look_up() -> None:
    fetch = FakeFetch(info())
    oc = catalog(fetch, POLICY.model_copy(update={"deny_owners": ("alice",)}))
    with pytest.raises(OpenCatalogError) as e:
        oc.resolve("alice/ink", "tiny")
    assert (e.value.status, e.value.code) == (403, "not_allowed")
    for bad in ("alice/../x", "tiny/alice/ink", "alice/ink@main"):  # not canonical: the sidecar never sends these
        with pytest.raises(OpenCatalogError) as e:
            oc.resolve(bad, "tiny")
        assert e.value.status == 400
    assert fetch.calls == 0


def test_an_unexpected_fetch_failure_is_a_502_without_its_text() -> None:
    oc = catalog(FakeFetch(RuntimeError("<html>secret body</html>")))
    with pytest.raises(OpenCatalogError) as e:
        oc.resolve("alice/ink", "tiny")
    assert e.value.status == 502 and "secret" not in e.value.message
