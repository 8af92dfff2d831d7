"""What a sidecar knows of its pool's load, for the cost policy (`placement.choose_endpoint_cost`). No I/O.

Each sidecar counts exactly the requests at its own worker (the ones it routed there and the hops it serves), and
what it has in flight at each peer. That alone is the shipped router's blind spot: requests enter through a random
pod's sidecar, so no sidecar sees a home pod's real queue (docs/fleet-sim.md). `LoadView` adds the peers' own
counts, as they report them: in every answer to a hop (`X-Loraplex-Load`) and when polled (`GET /v1/load`, every
second while the sidecar routes). A pod's load is then its last report plus what this sidecar sent it since, and
never less than this sidecar's own requests in flight there; a report older than `max_age_s` is ignored (a router
back from idle trusts only what it knows, and the idle probes correct the rest). Reports carry the peer's version
of its count, so a late poll answer does not undo a newer report.

`SwapCosts` keeps the cost policy's other inputs as running means from the worker's timing headers (X-Loraplex-Swap-Ms,
X-Loraplex-Fetch-Ms): what a request costs on a pod that holds the adapter warm (the RAM -> slot copy, `home_s`)
and on one that must fetch it first (`cold_s`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class LoadView:
    max_age_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _reported: dict[str, tuple[int, float, int]] = field(default_factory=dict)  # load, when, version
    _since: dict[str, int] = field(default_factory=dict)

    def report(self, endpoint: str, load: int, version: int | None = None) -> None:
        """`endpoint` said it has `load` requests at its worker (ours there included).

        `version` is the peer's count of load changes when it measured: a poll's answer and a hop's answer can
        arrive out of order, and the older measurement must not overwrite the newer (a home would look busy after
        its last job). A lower version is still taken once the last report is too old (the peer restarted).
        """
        now = self.clock()
        last = self._reported.get(endpoint)
        v = -1 if version is None else version
        if last is not None and v < last[2] and now - last[1] <= self.max_age_s:
            return
        self._reported[endpoint] = (max(0, load), now, v)
        self._since.pop(endpoint, None)

    def sent(self, endpoint: str) -> None:
        """This sidecar sent a request to `endpoint` (counted until its next report)."""
        self._since[endpoint] = self._since.get(endpoint, 0) + 1

    def view(
        self,
        endpoints: Iterable[str],
        own: Mapping[str, int],
        local: str | None = None,
        local_load: int = 0,
    ) -> dict[str, int]:
        """Requests in flight per endpoint: `local` (this pod) exactly, the others from reports and `own` sends."""
        now = self.clock()
        out = {}
        for e in endpoints:
            if e == local:
                out[e] = local_load
                continue
            n = own.get(e, 0)
            rep = self._reported.get(e)
            if rep is not None and now - rep[1] <= self.max_age_s:
                n = max(n, rep[0] + self._since.get(e, 0))
            if n:
                out[e] = n
        return out

    def forget(self, keep: Iterable[str]) -> None:
        """Drop what is known of endpoints not in `keep` (they left the table)."""
        keep = set(keep)
        for d in (self._reported, self._since):
            for e in [e for e in d if e not in keep]:
                del d[e]


@dataclass
class SwapCosts:
    """Running means (exponential, weight `alpha`) of a warm and a cold adapter's cost, seconds."""

    home_s: float = 0.005  # before any measurement: a RAM -> slot copy
    cold_s: float = 0.5  # ... and a first fetch from the source
    alpha: float = 0.2

    def observe(self, swap_s: float | None, fetch_s: float | None) -> None:
        """One answer's worker timings: its swap into a slot, and its wait for adapter bytes before the job."""
        if swap_s is None or fetch_s is None:  # a worker that does not report them
            return
        if fetch_s > 0:  # the pod had to fetch it (disk or source): a cold pod's cost
            self.cold_s += self.alpha * (fetch_s + max(0.0, swap_s) - self.cold_s)
        else:  # it was in RAM or a slot: a warm home's cost
            self.home_s += self.alpha * (max(0.0, swap_s) - self.home_s)
