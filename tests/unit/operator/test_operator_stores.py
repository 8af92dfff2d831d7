"""The operator's own pool and adapter views: snapshots, claimed names, wakes, and what a re-LIST removes."""

from __future__ import annotations

from typing import Any

from loraplex_operator.controllers.reflector import vanished
from loraplex_operator.controllers.stores import AdapterStore, PoolStore, adapter_claims
from loraplex_operator.logic.resolution import name_problem


def adapter(name: str, ns: str = "ml", aliases: list[Any] | None = None, **status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"type": "hub", "repo": f"o/{name}"}}
    if aliases is not None:
        spec["aliases"] = aliases
    meta = {"namespace": ns, "name": name, "generation": 1, "annotations": {"big": "x" * 1000}}
    return {"metadata": meta, "spec": spec, "status": {"phase": "Ready", **status}}


def pool(name: str, model: str = "sdxl", ns: str = "ml", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"model": {"name": model}, **spec}}


def test_snapshots_keep_what_the_table_needs_and_nothing_else() -> None:
    store = AdapterStore()
    assert store.apply(None, adapter("a", pool="sdxl", resolvedRevision="abc")) is None
    (snap,) = store.snapshots("ml")
    assert snap["metadata"] == {"namespace": "ml", "name": "a", "generation": 1}  # no annotations kept
    assert snap["status"] == {"pool": "sdxl", "resolvedRevision": "abc"}  # no phase
    assert store.snapshots("other") == [] and len(store) == 1


def test_claims_follow_aliases_through_updates_and_deletes() -> None:
    store = AdapterStore()
    store.apply("ADDED", adapter("a", aliases=["shared", "x"]))
    store.apply("ADDED", adapter("b", aliases=["shared", 7]))  # a non-string alias claims nothing
    claims = store.claimants("ml")
    assert sorted(claims["shared"]) == [("a", "alias"), ("b", "alias")]
    assert list(claims["a"]) == [("a", "primary")]
    assert claims.get("7") is None
    # The alias verdict the reconcile reaches from this view: b loses "shared" to a.
    assert name_problem("b", ["shared"], {}, store.claimants("ml")) == (
        "AliasConflict",
        "alias 'shared' is already used by adapter a",
    )
    store.apply("MODIFIED", adapter("a", aliases=["y"]))  # a drops "shared": b has it alone now
    assert list(store.claimants("ml")["shared"]) == [("b", "alias")]
    assert "x" not in store.claimants("ml") and list(store.claimants("ml")["y"]) == [("a", "alias")]
    assert name_problem("b", ["shared"], {}, store.claimants("ml")) is None
    previous = store.apply("DELETED", {"metadata": {"namespace": "ml", "name": "b"}})
    assert previous is not None and previous["metadata"]["name"] == "b"
    assert "shared" not in store.claimants("ml") and "b" not in store.claimants("ml")
    store.apply("DELETED", {"metadata": {"namespace": "ml", "name": "a"}})
    assert len(store.claimants("ml")) == 0 and len(store) == 0
    assert store.apply("DELETED", {"metadata": {"namespace": "ml", "name": "never"}}) is None


def test_served_by_names_the_adapters_routed_to_a_pool() -> None:
    store = AdapterStore()
    store.apply(None, adapter("a", pool="sdxl"))
    store.apply(None, adapter("b", pool="flux"))
    store.apply(None, adapter("c"))
    assert store.served_by("ml", "sdxl") == ["a"]
    assert store.served_by("ml", "gone") == [] and store.served_by("other", "sdxl") == []


def test_adapter_claims() -> None:
    assert adapter_claims("a", {"aliases": ["b", None, "a"]}) == {"b": "alias", "a": "primary"}


def test_pool_store_says_when_adapters_must_look_again() -> None:
    store = PoolStore()
    assert store.apply(None, pool("sdxl"))  # new
    assert not store.apply("MODIFIED", pool("sdxl"))  # a status-only change: nothing adapters see
    assert store.apply("MODIFIED", pool("sdxl", routing={"aliases": ["big"]}))
    assert [p.aliases for p in store.infos("ml")] == [("big",)]
    # An invalid spec: still known (its deletion wakes), but offered to no adapter.
    assert store.apply("MODIFIED", pool("sdxl", model={"name": ""}))
    assert store.infos("ml") == [] and len(store) == 1
    assert store.apply("DELETED", {"metadata": {"namespace": "ml", "name": "sdxl"}})
    assert not store.apply("DELETED", {"metadata": {"namespace": "ml", "name": "sdxl"}})
    assert len(store) == 0 and list(store.keys()) == []


def test_vanished_is_scoped_to_the_namespace_listed() -> None:
    known = [("a", "x"), ("a", "y"), ("b", "z")]
    assert vanished(known, {("a", "x")}, "a") == [("a", "y")]
    assert vanished(known, {("a", "x")}, None) == [("a", "y"), ("b", "z")]
    assert vanished(known, set(known), None) == []
