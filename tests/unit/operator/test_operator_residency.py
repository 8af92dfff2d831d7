"""Adapter residency: parsing a pod's report, aggregating per adapter, and writing only what changed."""

from __future__ import annotations

from typing import Any

import pytest

from loraplex_operator.logic.residency import (
    MAX_NAMES_PER_POD,
    MAX_RESIDENT_PODS,
    AdapterResidency,
    PodResidency,
    aggregate,
    due_writes,
    parse_resident,
    status_fragment,
)
from loraplex_operator.logic.stats import parse_stats


def _report(gpu: tuple[str, ...] = (), ram: tuple[str, ...] = (), disk: tuple[str, ...] = ()) -> PodResidency:
    return PodResidency({**{n: "disk" for n in disk}, **{n: "ram" for n in ram}, **{n: "gpu" for n in gpu}})


@pytest.mark.parametrize(
    ("doc", "tiers", "truncated"),
    [
        (None, None, None),  # a gateway, or a worker that did not answer: unknown, not empty
        ("junk", None, None),
        ({}, {}, False),
        ({"gpu": ["a"], "ram": ["b"], "disk": ["c"]}, {"a": "gpu", "b": "ram", "c": "disk"}, False),
        ({"gpu": ["a"], "disk": ["a"]}, {"a": "gpu"}, False),  # listed twice: its highest tier
        ({"gpu": "a", "ram": [1, "", None, "b", "x" * 254]}, {"b": "ram"}, False),  # wrong types are skipped
        ({"gpu": ["a"], "truncated": True}, {"a": "gpu"}, True),
        ({"vram": ["a"]}, {}, False),  # unknown tiers are ignored
    ],
)
def test_parse_resident_table(doc: Any, tiers: dict[str, str] | None, truncated: bool | None) -> None:
    got = parse_resident(doc)
    if tiers is None:
        assert got is None
    else:
        assert got is not None and dict(got.tiers) == tiers and got.truncated == truncated


def test_parse_resident_is_bounded_whatever_the_sidecar_sends() -> None:
    got = parse_resident({"disk": [f"a{i}" for i in range(MAX_NAMES_PER_POD + 50)]})
    assert got is not None and len(got.tiers) == MAX_NAMES_PER_POD and got.truncated


def test_stats_document_carries_the_pods_residency() -> None:
    snap = parse_stats({"pod": "p0", "pools": {}, "adapters": {}, "resident": {"gpu": ["a"], "counts": {"gpu": 1}}})
    assert snap.resident is not None and dict(snap.resident.tiers) == {"a": "gpu"}
    assert parse_stats({"pod": None, "mode": "gateway", "pools": {}}).resident is None


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        ({}, {}),
        (
            {"p1": _report(gpu=("a",)), "p0": _report(ram=("a",), disk=("b",))},
            {
                "a": AdapterResidency({"gpu": 1, "ram": 1, "disk": 0}, (("p1", "gpu"), ("p0", "ram"))),
                "b": AdapterResidency({"gpu": 0, "ram": 0, "disk": 1}, (("p0", "disk"),)),
            },
        ),
        (
            {"p2": _report(disk=("a",)), "p1": _report(disk=("a",)), "p0": _report(gpu=("a",))},
            {"a": AdapterResidency({"gpu": 1, "ram": 0, "disk": 2}, (("p0", "gpu"), ("p1", "disk"), ("p2", "disk")))},
        ),
    ],
)
def test_aggregate_table(reports: dict[str, PodResidency], expected: dict[str, AdapterResidency]) -> None:
    assert aggregate(reports) == expected


def test_aggregate_bounds_the_pod_list_but_counts_every_pod() -> None:
    reports = {f"p{i:03d}": _report(disk=("a",)) for i in range(100)}
    reports["z-gpu"] = _report(gpu=("a",))
    res = aggregate(reports)["a"]
    assert res.counts == {"gpu": 1, "ram": 0, "disk": 100}
    assert len(res.pods) == MAX_RESIDENT_PODS and res.pods[0] == ("z-gpu", "gpu")


def test_status_fragment_and_summary() -> None:
    res = aggregate(
        {"p0": _report(gpu=("a",)), "p1": _report(ram=("a",)), "p2": _report(disk=("a",)), "p3": _report(disk=("a",))}
    )
    frag = status_fragment(res["a"])
    assert frag["resident"] == {"gpu": 1, "ram": 1, "disk": 2}
    assert frag["residentPods"][0] == {"pod": "p0", "tier": "gpu"} and len(frag["residentPods"]) == 4
    assert frag["residentSummary"] == "p0(gpu) p1(ram) p2(disk) +1"
    empty = {"resident": {"gpu": 0, "ram": 0, "disk": 0}, "residentPods": [], "residentSummary": ""}
    assert status_fragment(None) == empty


def _adapter(name: str, status: dict[str, Any] | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {}, "status": status or {}}


def test_due_writes_only_what_changed() -> None:
    res = aggregate({"p0": _report(gpu=("a",), disk=("b",))})
    written_a = status_fragment(res["a"])
    adapters = [
        _adapter("a", written_a),  # already shows this: no write
        _adapter("b", {"phase": "Ready"}),  # newly resident: write
        _adapter("c", {"phase": "Ready"}),  # never resident, never written: no write (no storm at 2,000)
        _adapter("d", {**written_a}),  # was resident, no pod reports it now: cleared
        _adapter("e", deleting=True),
    ]
    due = due_writes(adapters, res)
    assert set(due) == {"b", "d"}
    assert due["b"]["resident"] == {"gpu": 0, "ram": 0, "disk": 1}
    assert due["d"] == status_fragment(None)


def test_due_writes_does_not_repeat_a_write_the_index_has_not_seen_yet() -> None:
    res = aggregate({"p0": _report(gpu=("a",))})
    adapters = [_adapter("a")]
    first = due_writes(adapters, res)
    assert set(first) == {"a"}
    assert due_writes(adapters, res, recently_written=first) == {}
    moved = aggregate({"p0": _report(ram=("a",))})
    assert due_writes(adapters, moved, recently_written=first)["a"]["resident"]["ram"] == 1


def test_an_unchanged_fleet_of_2000_adapters_writes_nothing() -> None:
    names = [f"ad-{i:04d}" for i in range(2000)]
    reports = {f"pod-{p}": _report(disk=tuple(names[p::4])) for p in range(4)}
    res = aggregate(reports)
    adapters = [_adapter(n, status_fragment(res.get(n))) for n in names]
    assert due_writes(adapters, res) == {}
    reports["pod-0"] = _report(gpu=(names[0],), disk=tuple(names[4::4]))
    assert set(due_writes(adapters, aggregate(reports))) == {names[0]}
