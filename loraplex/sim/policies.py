"""Placement and sizing policies the simulator found worth keeping. Pure functions, no I/O.

Each builds on the shipped code (inference_pod.placement, loraplex_operator.sizing)
and is meant to be wired into the real sidecar / operator as is:

- `choose_endpoint_tiered`: the sidecar's choice, tier-aware. Among the
  pods not over the load bound that are the adapter's homes, or hold it in a
  GPU slot or in RAM already, prefer GPU slot, then RAM, then a home with a
  free slot, then the least loaded (rank breaks ties); else exactly what
  `placement.choose_endpoint` answers (spill included).
- `budget_replication`: the operator's per-adapter home counts with a churn
  budget: at most `budget` adapters change their count per poll, the largest
  demand first, increases before decreases.
- `erlang_c`, `wait_quantile_replicas`: pods needed so that a given quantile
  of the queueing delay stays under a budget (M/M/c), for latency-target sizing.
- `latency_raw_replicas`: `sizing.raw_replicas`, or more pods when the
  latency budget needs them.
- `inflight_raw_replicas`: sizing where requests in flight count as busy
  servers as they are (not divided by the target utilisation).
- `home_prefetch`: which adapters a pod should bring to its disk and RAM
  tiers ahead of use: those it is a home for, most requested first, within
  the tiers' budgets.

Kept and wired into the sidecar, so they moved to `inference_pod.router.placement` (re-exported here):
`choose_endpoint_cost` (candidates by queued work + swap cost) and `attempt_plan` (idle probes, then the plain
choice).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from .project import placement

# Tier ranks for `choose_endpoint_tiered`'s `tier_of` callback.
IN_SLOT, IN_RAM, FREE_SLOT, COLD = 0, 1, 2, 3


def choose_endpoint_tiered(
    key: str,
    endpoints: Iterable[str],
    replication: int,
    outstanding: Mapping[str, int],
    load_bound: float,
    tier_of: Callable[[str], int],
) -> list[str]:
    """Ordered candidates like `placement.choose_endpoint`, preferring pods where the adapter is warm.

    `tier_of(endpoint)` ranks a pod for this adapter: IN_SLOT, IN_RAM,
    FREE_SLOT or COLD. A non-home pod is eligible only when the adapter is in
    its slot or RAM already (a spill left it there), so the adapter's
    working set stays on a few pods.
    """
    eps = endpoints if isinstance(endpoints, tuple | list) else tuple(endpoints)
    base = placement.choose_endpoint(key, eps, replication, outstanding, load_bound)
    if len(base) < 2:
        return base
    ranked = placement.rank_endpoints(key, eps)
    homes = set(ranked[: max(1, replication)])
    limit = placement.load_limit(outstanding, ranked, load_bound)
    rank = {e: i for i, e in enumerate(ranked)}
    best: tuple[int, int, int] | None = None
    chosen = ""
    for e in ranked:
        load = outstanding.get(e, 0)
        if load > limit:
            continue
        tier = tier_of(e)
        if e not in homes and tier > IN_RAM:
            continue
        cand = (tier, load, rank[e])
        if best is None or cand < best:
            best, chosen = cand, e
    if best is None or chosen == base[0]:
        return base
    return [chosen, *(e for e in base if e != chosen)]


def budget_replication(
    current: Mapping[str, int], wanted: Mapping[str, int], budget: int | None, demand: Mapping[str, float]
) -> dict[str, int]:
    """Home counts after this poll: `wanted`, but at most `budget` adapters changed from `current`.

    Adapters missing from `current` count as their wanted value's floor of 1
    (a new adapter gets one home at once, outside the budget). Changes go by
    |demand| order, increases first; the rest keep their current count.
    """
    out = {n: current.get(n, 1) for n in wanted}
    changes = [n for n, w in wanted.items() if w != out[n]]
    if budget is None or len(changes) <= budget:
        out.update({n: wanted[n] for n in changes})
        return out
    changes.sort(key=lambda n: (wanted[n] < out[n], -demand.get(n, 0.0), n))
    for n in changes[:budget]:
        out[n] = wanted[n]
    return out


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with `offered` Erlangs on `servers` servers."""
    if offered <= 0:
        return 0.0
    if servers <= offered:
        return 1.0
    b = 1.0  # Erlang B by the stable recurrence
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    rho = offered / servers
    return b / (1 - rho * (1 - b))


def wait_exceeds(servers: int, rate: float, service_s: float, wait_s: float) -> float:
    """P(queueing delay > wait_s) in M/M/c."""
    if rate <= 0:
        return 0.0
    a = rate * service_s
    if servers <= a:
        return 1.0
    return erlang_c(servers, a) * math.exp(-(servers / service_s - rate) * wait_s)


def wait_quantile_replicas(
    rate: float, service_s: float, wait_budget_s: float, quantile: float = 0.95, max_servers: int = 4096
) -> int:
    """Fewest servers with P(wait > wait_budget_s) <= 1 - quantile (M/M/c: conservative for fixed service times)."""
    if rate <= 0 or service_s <= 0:
        return 0
    c = max(1, math.ceil(rate * service_s))
    while c < max_servers and wait_exceeds(c, rate, service_s, wait_budget_s) > 1 - quantile:
        c += 1
    return c


def latency_raw_replicas(
    rate: float,
    service_s: float,
    in_flight: int,
    target_utilization: float,
    wait_budget_s: float | None,
    quantile: float = 0.95,
) -> int:
    """`sizing.raw_replicas`, raised to what the latency budget needs (None: no budget)."""
    from .project import Load, raw_replicas

    raw = raw_replicas(Load(rate, service_s, in_flight), target_utilization)
    if wait_budget_s is None or rate <= 0:
        return raw
    return max(raw, wait_quantile_replicas(rate, service_s, wait_budget_s, quantile))


def inflight_raw_replicas(
    rate: float,
    service_s: float,
    in_flight: int,
    target_utilization: float,
    wait_budget_s: float | None = None,
    quantile: float = 0.95,
    headroom: int = 0,
) -> int:
    """Pods needed: Little's law at the target utilisation, or the requests in flight right now, whichever is
    larger -- without dividing the in-flight count by the target utilisation as `sizing.raw_replicas` does.

    Requests in flight are servers busy *now*; dividing them by 0.7 too makes a
    small pool jump to ceil(3 / 0.7) = 5 pods whenever three requests overlap
    (routine at 1 request in flight on average), and the scale-down window
    then holds that for five minutes. `headroom` idle pods are kept beyond
    those in flight (a request arriving now finds one free). With a latency
    budget, at least `wait_quantile_replicas`.
    """
    from .project import Load, raw_replicas

    busy = int(in_flight) + (headroom if in_flight > 0 or rate > 0 else 0)
    raw = max(raw_replicas(Load(rate, service_s, 0), target_utilization), busy)
    if wait_budget_s is not None and rate > 0:
        raw = max(raw, wait_quantile_replicas(rate, service_s, wait_budget_s, quantile))
    return raw


def home_prefetch(
    pod: str, endpoints: Sequence[str], adapters: Sequence[tuple[str, float, int, int]], budget: int
) -> list[str]:
    """Adapters `pod` is a home for, most demanded first, until their sizes fill `budget`.

    `adapters`: (name, demand, replication, size) in any order.
    """
    out, used = [], 0
    for name, _demand, replication, size in sorted(adapters, key=lambda a: (-a[1], a[0])):
        if used + size > budget:
            continue
        if pod in placement.home_endpoints(name, endpoints, replication):
            out.append(name)
            used += size
    return out


# The sidecar's cost order and attempt plan live in the router's placement module (the sidecar runs them too).
choose_endpoint_cost = placement.choose_endpoint_cost
attempt_plan = placement.attempt_plan
