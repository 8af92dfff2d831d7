"""Placement: which pod of a pool should serve a request for an adapter.

Pure functions, no I/O. Every sidecar computes the same home pods from the
same endpoint list with no coordination, through rendezvous
(highest-random-weight) hashing: each (key, endpoint) pair gets a score from a
stable hash, and the key's homes are the endpoints with the highest scores.
Adding or removing one of N endpoints moves only the keys whose homes
change, about 1/N of them, so adapter caches stay warm across scaling.

Load: among the homes the one with the least outstanding work wins (ties go
to the higher-ranked home, so an idle pool always uses the primary home and
its warm cache). A home is *over the bound* when

    outstanding[home] > load_bound * mean_outstanding + 1

where the mean is over all the pool's ready endpoints. The "+1" keeps a lone
request from ever spilling off an idle pool. When every home is over the
bound, the request spills to the least-loaded non-home endpoint.

The outstanding counts are the caller's own view (a sidecar knows what it has
in flight itself); only the home ranking is shared across sidecars.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence


def score(key: str, endpoint: str) -> int:
    """Stable 64-bit weight of `endpoint` for `key` (same on every process and host)."""
    digest = hashlib.blake2b(f"{key}|{endpoint}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank_endpoints(key: str, endpoints: Iterable[str]) -> list[str]:
    """All endpoints, best home first. Duplicates are dropped; ties break on the name."""
    unique = set(endpoints)
    return sorted(unique, key=lambda e: (-score(key, e), e))


def home_endpoints(key: str, endpoints: Iterable[str], replication: int) -> list[str]:
    """The key's home endpoints: the top `replication` of the ranking (at least one)."""
    ranked = rank_endpoints(key, endpoints)
    return ranked[: max(1, replication)]


def load_limit(outstanding: Mapping[str, int], endpoints: Sequence[str], load_bound: float) -> float:
    """The outstanding count above which an endpoint is over the bound."""
    if not endpoints:
        return 0.0
    mean = sum(max(0, outstanding.get(e, 0)) for e in endpoints) / len(endpoints)
    return load_bound * mean + 1.0


def choose_endpoint(
    key: str,
    endpoints: Iterable[str],
    replication: int,
    outstanding: Mapping[str, int],
    load_bound: float,
) -> list[str]:
    """Ordered candidates for a request: the chosen endpoint first, then fallbacks for retries.

    Order: the chosen endpoint, then the remaining homes, then every other
    endpoint (least outstanding first, rank breaking ties). Empty when there
    are no endpoints.
    """
    ranked = rank_endpoints(key, endpoints)
    if not ranked:
        return []
    homes = ranked[: max(1, replication)]
    others = ranked[len(homes) :]
    rank = {e: i for i, e in enumerate(ranked)}

    def by_load(e: str) -> tuple[int, int]:
        return (outstanding.get(e, 0), rank[e])

    homes_by_load = sorted(homes, key=by_load)
    others_by_load = sorted(others, key=by_load)
    limit = load_limit(outstanding, ranked, load_bound)
    best_home = homes_by_load[0]
    if outstanding.get(best_home, 0) > limit and others_by_load:
        chosen = others_by_load[0]
        return [chosen, *homes_by_load, *others_by_load[1:]]
    return [*homes_by_load, *others_by_load]
