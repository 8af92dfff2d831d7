"""Where each adapter is resident, from the sidecars' `/v1/stats`, and the status writes it needs. Pure.

Each pod's sidecar reports its worker's adapters at their highest tier
(`"resident": {"gpu": [...], "ram": [...], "disk": [...], "counts", "truncated"}`).
`aggregate` turns the reports of a namespace's pods into, per adapter, how
many pods hold it in each tier and which pods (at most `MAX_RESIDENT_PODS`,
GPU first). `status_fragment` is what goes into the LoraAdapter's status;
`due_writes` compares it with the status each adapter has now (kopf's
index) and returns only the adapters whose value changed, so a poll of
2,000 adapters whose residency did not move writes nothing. A status that
never had the fields equals an empty residency: unused adapters are never
written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TIERS = ("gpu", "ram", "disk")
MAX_RESIDENT_PODS = 16  # status.residentPods entries per adapter
MAX_SUMMARY_PODS = 3  # pods named in status.residentSummary (the wide printer column)
MAX_NAMES_PER_POD = 10_000  # names read from one report, whatever the sidecar sent
_MAX_NAME = 253


@dataclass(frozen=True)
class PodResidency:
    """One pod's report: adapter name -> tier (its highest)."""

    tiers: Mapping[str, str] = field(default_factory=dict)
    truncated: bool = False


@dataclass(frozen=True)
class AdapterResidency:
    counts: Mapping[str, int]  # tier -> pods holding the adapter there
    pods: tuple[tuple[str, str], ...]  # (pod, tier), GPU first, then by pod name; at most MAX_RESIDENT_PODS


def parse_resident(doc: Any) -> PodResidency | None:
    """The `resident` section of one `/v1/stats` document; None when absent or not an object (unknown)."""
    if not isinstance(doc, dict):
        return None
    tiers: dict[str, str] = {}
    seen = 0
    for tier in TIERS:
        names = doc.get(tier)
        if not isinstance(names, list):
            continue
        for name in names:
            if seen >= MAX_NAMES_PER_POD:
                break
            seen += 1
            if isinstance(name, str) and 0 < len(name) <= _MAX_NAME and name not in tiers:
                tiers[name] = tier  # gpu is read first: a name listed twice keeps its highest tier
    return PodResidency(tiers, bool(doc.get("truncated")) or seen >= MAX_NAMES_PER_POD)


def aggregate(reports: Mapping[str, PodResidency]) -> dict[str, AdapterResidency]:
    """Per adapter: pods per tier and the pods themselves (bounded), from every pod's report."""
    holders: dict[str, list[tuple[str, str]]] = {}
    for pod, report in reports.items():
        for name, tier in report.tiers.items():
            holders.setdefault(name, []).append((pod, tier))
    rank = {t: i for i, t in enumerate(TIERS)}
    out = {}
    for name, pods in holders.items():
        pods.sort(key=lambda pt: (rank[pt[1]], pt[0]))
        counts = {t: sum(1 for _, pt in pods if pt == t) for t in TIERS}
        out[name] = AdapterResidency(counts, tuple(pods[:MAX_RESIDENT_PODS]))
    return out


def status_fragment(res: AdapterResidency | None) -> dict[str, Any]:
    """The status fields for one adapter (all zeros and empty when no pod reports it)."""
    if res is None:
        return {"resident": {t: 0 for t in TIERS}, "residentPods": [], "residentSummary": ""}
    named = [f"{pod}({tier})" for pod, tier in res.pods[:MAX_SUMMARY_PODS]]
    more = sum(res.counts.values()) - len(named)
    summary = " ".join(named) + (f" +{more}" if more > 0 else "")
    return {
        "resident": {t: int(res.counts.get(t, 0)) for t in TIERS},
        "residentPods": [{"pod": pod, "tier": tier} for pod, tier in res.pods],
        "residentSummary": summary,
    }


def current_fragment(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The residency an adapter's status shows now, normalised like `status_fragment` (absent = empty)."""
    status = status or {}
    counts = status.get("resident")
    counts = counts if isinstance(counts, dict) else {}
    pods = status.get("residentPods")
    pods = pods if isinstance(pods, list) else []
    return {
        "resident": {t: counts.get(t, 0) for t in TIERS},
        "residentPods": [p for p in pods if isinstance(p, dict)],
        "residentSummary": status.get("residentSummary") or "",
    }


def due_writes(
    adapters: Iterable[Mapping[str, Any]],
    residency: Mapping[str, AdapterResidency],
    recently_written: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Adapter name -> status fragment to write, for the adapters (as kopf's index holds them) whose residency
    differs from their status. `recently_written`: fragments this operator wrote whose watch event may not have
    reached the index yet; an adapter whose desired value equals one of those is not written again."""
    recently_written = recently_written or {}
    out = {}
    for body in adapters:
        meta = body.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or meta.get("deletionTimestamp"):
            continue
        want = status_fragment(residency.get(name))
        if want == current_fragment(body.get("status")) or want == recently_written.get(name):
            continue
        out[name] = want
    return out
