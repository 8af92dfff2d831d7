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


def choose_endpoint_cost(
    key: str,
    endpoints: Iterable[str],
    replication: int,
    outstanding: Mapping[str, int],
    service_s: float,
    warm: Mapping[str, float],
    home_s: float,
    cold_s: float,
) -> list[str]:
    """Candidates by expected time to start: the work queued ahead plus the adapter's swap cost there.

    cost(e) = outstanding[e] * service_s + swap(e), where swap(e) is
    warm[e] when the router knows the adapter's tier on e (slot, RAM, disk),
    else home_s for one of its homes and cold_s for any other pod. Ties go
    to the higher-ranked pod, so an idle pool sends an adapter to its first
    home and its caches stay warm; a busy home loses to an idle pod as soon
    as the wait behind it costs more than bringing the adapter there. A
    router with no view of the pods' tiers passes warm={} and home_s = the
    RAM -> slot cost (homes are warm), cold_s = a fetch from the source.
    The fleet simulator found this order (docs/fleet-sim.md) and runs this very function.
    """
    eps = endpoints if isinstance(endpoints, tuple | list) else tuple(endpoints)
    ranked = rank_endpoints(key, eps)
    n_homes = max(1, replication)
    get_out, get_warm = outstanding.get, warm.get
    scored = [
        (get_out(e, 0) * service_s + get_warm(e, home_s if i < n_homes else cold_s), i, e) for i, e in enumerate(ranked)
    ]
    scored.sort()
    return [e for _, _, e in scored]


def attempt_plan(candidates: Sequence[str], max_attempts: int, idle_probes: int) -> list[tuple[str, bool]]:
    """The attempts for one request, in order: (endpoint, only if idle?).

    The first `idle_probes` candidates are asked to take the request only if
    idle (a busy pod refuses at once and the next one is asked); then the
    candidates in order, unconditionally, until `max_attempts` in all. At
    least one unconditional attempt is kept, so a request is never refused
    because every pod was busy; a lone candidate is not probed (nothing else
    could take the request).
    """
    limit = max(1, max_attempts)
    probes = min(max(0, idle_probes), len(candidates), limit - 1) if len(candidates) > 1 else 0
    plan = [(e, True) for e in candidates[:probes]]
    plan += [(e, False) for e in candidates[: limit - probes]]
    return plan
