"""Forwarding a generation to a pod, and the retry policy.

A placed request goes to its candidate pods in order (`Forwarder.route`): the local worker when the candidate is
this pod, else the peer's sidecar with the hop header. A request that a peer already placed here goes to the local
worker only (`Forwarder.serve_hop`). Both paths judge an attempt the same way, by `classify`:

| outcome                                              | verdict         | then                               |
|------------------------------------------------------|-----------------|------------------------------------|
| 2xx-4xx answer other than 429                        | `OK`            | passed to the client               |
| 5xx answer other than 502/503 (500, 504, ...)        | `FAILED`        | passed to the client (not retried) |
| 429, 502, 503 answer                                 | `RETRY_STATUS`  | next candidate; the last is passed |
| connect timeout, connection refused/reset, dropped   | `RETRY_CONNECT` | next candidate (hop path: 502)     |
| no answer within the request's deadline              | `TIMEOUT`       | 504, the deadline is spent         |

500 is not retried because a deterministic failure would repeat; 504 and other 4xx are the request's own answer.
A generation has no side effects, so a retry is safe with or without a seed.

The candidates and their order come from the pool's routing policy (the table's `policy`, or the sidecar's
`--routing-policy`): `cost` runs `placement.choose_endpoint_cost` on the shared in-flight view
(`loadview.LoadView`) and `placement.attempt_plan`'s idle probes: the first candidates are asked to serve only if
their worker is idle (`X-Loraplex-If-Idle`); a busy one answers 429 with `X-Loraplex-Busy` at once and the next is
asked (a probe known to be busy here, the own worker's or one with a request of ours in flight, is skipped without
asking), then the plain order. A refused probe is never the answer passed to the client. `rendezvous` is the
shipped `placement.choose_endpoint` on this sidecar's own counts. Both are the simulator's code (loraplex/sim).
"""

from __future__ import annotations

import contextlib
import enum
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from inference_pod.router.loadview import LoadView, SwapCosts
from inference_pod.router.placement import attempt_plan, choose_endpoint, choose_endpoint_cost
from inference_pod.router.request import Resolved, route_header
from inference_pod.router.stats import RouterStats
from loraplex.api import headers as hdr
from loraplex.api.errors import ApiError
from loraplex.api.hopauth import HopKeys
from loraplex.api.routing_table import Endpoint, PoolEntry, RoutingTable
from loraplex.egress import aiohttp_trace_configs

RETRY_STATUSES = frozenset({429, 502, 503})
DEFAULT_SERVICE_S = 1.0  # the cost policy's service time before this sidecar has measured one
# Request headers worth passing upstream; everything else stays here.
FORWARD_REQUEST_HEADERS = ("Content-Type", "Accept", "X-Request-Id")


class Verdict(enum.StrEnum):
    """What one attempt's outcome means; the values are the `attempt` label of the router's metrics."""

    OK = "ok"
    FAILED = "failed"
    RETRY_STATUS = "retry_status"
    RETRY_CONNECT = "retry_connect"
    TIMEOUT = "timeout"

    @property
    def retry(self) -> bool:
        return self in (Verdict.RETRY_STATUS, Verdict.RETRY_CONNECT)


def classify(outcome: int | BaseException) -> Verdict | None:
    """The verdict on one attempt: an HTTP status, or the exception the attempt raised (None: not ours, re-raise)."""
    if isinstance(outcome, int):
        if outcome in RETRY_STATUSES:
            return Verdict.RETRY_STATUS
        return Verdict.OK if outcome < 500 else Verdict.FAILED
    # A connect timeout is both a TimeoutError and a connection error: the pod never took the request, so retry.
    if isinstance(outcome, aiohttp.ConnectionTimeoutError):
        return Verdict.RETRY_CONNECT
    if isinstance(outcome, TimeoutError):
        return Verdict.TIMEOUT
    if isinstance(outcome, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return Verdict.RETRY_CONNECT
    return None


@dataclass
class Upstream:
    """One upstream answer, read whole."""

    status: int
    headers: Any
    body: bytes
    seconds: float
    endpoint: str


def ms_header(headers: Any, name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, TypeError, ValueError):
        return None


def parse_load(value: str | None) -> tuple[int, int | None] | None:
    """(load, version) from an `X-Loraplex-Load` value ("3 1042", or "3" without a version); None if malformed."""
    try:
        parts = (value or "").split()
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else None
    except (IndexError, ValueError):
        return None


def service_seconds(up: Upstream) -> float | None:
    """Worker busy time (swap + inference) from its timing headers; else the round trip less queueing."""
    if not 200 <= up.status < 300:
        return None
    inference = ms_header(up.headers, hdr.INFERENCE_MS)
    if inference is not None:
        return (inference + (ms_header(up.headers, hdr.SWAP_MS) or 0.0)) / 1000.0
    queue = ms_header(up.headers, hdr.QUEUE_MS) or 0.0
    return max(0.0, up.seconds - queue / 1000.0)


class Forwarder:
    """Sends requests to pods for one sidecar: its own worker (`worker_url`, None at the gateway) or peer sidecars.

    `outstanding` counts in-flight requests per endpoint name (placement's least-outstanding choice reads it);
    `local_load` the requests at this pod's own worker (routed here or hops), which peers read as its load.
    """

    def __init__(
        self,
        stats: RouterStats,
        *,
        worker_url: str | None,
        pod_name: str | None,
        hop_name: str,
        connect_timeout_s: float,
        max_attempts: int,
        hop_keys: HopKeys | None = None,
        policy: str | None = None,
    ) -> None:
        self.stats = stats
        self.policy = policy  # None: each pool's routing policy from the table
        self.hop_keys = hop_keys
        self.worker_url = worker_url
        self.pod_name = pod_name
        self.hop_name = hop_name
        self.connect_timeout_s = connect_timeout_s
        self.max_attempts = max_attempts
        self.outstanding: dict[str, int] = {}
        self.local_load = 0
        self.load_version = 0  # changes of local_load: orders this pod's load reports at the peers
        self.loads = LoadView()
        self.swap_costs = SwapCosts()
        self.last_routed = float("-inf")  # monotonic time of the last request placed here (the load poll's gate)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=15)
        # Peers are pod IPs from the table: the egress guard (on in tests) keeps them on the machine.
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trace_configs=aiohttp_trace_configs()
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # -- one request, placed by this router -----------------------------------------------------------------------

    async def route(
        self,
        request: web.Request,
        body: bytes,
        table: RoutingTable,
        pool: PoolEntry,
        ready: list[Endpoint],
        r: Resolved,
        deadline: float,
    ) -> tuple[Upstream, int]:
        """Send to the chosen pod, falling back along the candidate list; (answer, attempts)."""
        by_name = {e.name: e for e in ready}
        if r.adapters:
            key, replication = r.adapters[0], r.entry(table, r.adapters[0]).replication
        else:  # the base model is warm everywhere: any pod is a home
            key, replication = f"pool:{r.pool}", len(ready)
        self.last_routed = time.monotonic()
        headers = self.forward_headers(request)
        headers[hdr.ROUTE] = route_header(table, r)
        last: Upstream | None = None
        last_error = ""
        attempts = 0
        for name, if_idle in self.plan(key, list(by_name), replication, pool, r.pool):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            local_url = self._local_url(name)
            if if_idle and (self.local_load if local_url else self.outstanding.get(name, 0)) > 0:
                continue  # known to be busy: no need to ask
            attempts += 1
            target = (local_url or by_name[name].url.rstrip("/")) + request.path_qs
            # Peers check the same bearer token; the local worker does not need it.
            hdrs = self._signed(
                headers if local_url else self._with_auth(headers, request), request, body, to="" if local_url else name
            )
            if if_idle and not local_url and self.hop_keys is not None:
                flag = self.hop_keys.sign_flag(hdr.IF_IDLE, hdrs.get(hdr.HOP_AUTH, ""))
                if flag:
                    hdrs[hdr.IF_IDLE] = flag
            try:
                with self._in_flight(name), self._at_worker(bool(local_url)):
                    if not local_url:
                        self.loads.sent(name)
                    up = await self.post(target, body, hdrs, remaining, name)
            except Exception as e:
                verdict = classify(e)
                if verdict is None:
                    raise
                self.stats.attempt(r.pool, verdict.value)
                if verdict is Verdict.TIMEOUT:
                    raise ApiError(
                        504, f"No answer from pod '{name}' within the request timeout.", code="upstream_timeout"
                    ) from None
                last_error = (
                    f"{name}: connect timeout ({e})"
                    if isinstance(e, aiohttp.ConnectionTimeoutError)
                    else f"{name}: {type(e).__name__}: {e}"
                )
                continue
            self._learn(name, up, local=bool(local_url))
            if if_idle and up.status == 429 and hdr.BUSY in up.headers:
                self.stats.attempt(r.pool, "busy")
                last_error = last_error or f"{name}: busy"
                continue
            verdict = classify(up.status)
            assert verdict is not None
            self.stats.attempt(r.pool, verdict.value)
            if verdict.retry:
                last = up
                last_error = f"{name}: HTTP {up.status}"
                continue
            return up, attempts
        if last is not None:  # every candidate said "not now": pass the last answer on
            return last, attempts
        raise ApiError(
            502,
            f"No pod of pool '{r.pool}' could be reached ({last_error or 'timed out'}).",
            code="upstream_unavailable",
        )

    def plan(
        self, key: str, endpoints: list[str], replication: int, pool: PoolEntry, pool_name: str
    ) -> list[tuple[str, bool]]:
        """The attempts for a request: (endpoint, only if idle?), by the pool's routing policy."""
        if (self.policy or pool.policy) == "cost":
            view = self.loads.view(endpoints, self.outstanding, self.pod_name, self.local_load)
            service_s = self.stats.mean_service_seconds(pool_name) or DEFAULT_SERVICE_S
            sc = self.swap_costs
            ordered = choose_endpoint_cost(key, endpoints, replication, view, service_s, {}, sc.home_s, sc.cold_s)
            return attempt_plan(ordered, self.max_attempts, pool.idle_probes)
        return attempt_plan(
            choose_endpoint(key, endpoints, replication, self.outstanding, pool.load_bound), self.max_attempts, 0
        )

    def _learn(self, name: str, up: Upstream, local: bool) -> None:
        """What an answer says about the pool: the peer's load, the adapter's swap cost."""
        if not local and (parsed := parse_load(up.headers.get(hdr.LOAD))) is not None:
            self.loads.report(name, *parsed)
        tier = up.headers.get(hdr.SWAP_TIER, "none")
        if 200 <= up.status < 300 and tier != "none" and "," not in tier:  # exactly one adapter: one tier
            swap_ms, fetch_ms = ms_header(up.headers, hdr.SWAP_MS), ms_header(up.headers, hdr.FETCH_MS)
            if swap_ms is not None and fetch_ms is not None:
                self.swap_costs.observe(swap_ms / 1000, fetch_ms / 1000)

    # -- one request, placed here by a peer (hop) -----------------------------------------------------------------

    async def serve_hop(self, request: web.Request, body: bytes, route: str | None, deadline: float) -> Upstream:
        """A request another router already placed here: local worker only, never forwarded again."""
        hop = request.headers[hdr.HOP]
        if self.worker_url is None:
            raise ApiError(
                502,
                f"Request routed here by '{hop}', but this router has no local worker "
                "(loop guard: routed requests are not forwarded again).",
                code="loop_detected",
            )
        if self.local_load > 0 and self.hop_keys is not None:
            flag = request.headers.get(hdr.IF_IDLE)
            if flag and self.hop_keys.verify_flag(flag, hdr.IF_IDLE, request.headers.get(hdr.HOP_AUTH)):
                return self.busy()
        headers = self.forward_headers(request)
        headers[hdr.HOP] = hop
        if route:
            headers[hdr.ROUTE] = route
        headers = self._signed(headers, request, body, to="")  # this pod's own worker
        pool = "unknown"
        with contextlib.suppress(ValueError, KeyError, TypeError):
            pool = str(json.loads(route)["pool"]) if route else pool
        self.stats.served(pool)
        remaining = deadline - time.monotonic()
        name = self.pod_name or "local"
        try:
            with self._at_worker(True):
                return await self.post(self.worker_url + request.path_qs, body, headers, remaining, name)
        except Exception as e:
            verdict = classify(e)
            if verdict is Verdict.TIMEOUT:
                raise ApiError(
                    504, "No answer from the local worker within the request timeout.", code="upstream_timeout"
                ) from None
            if verdict is Verdict.RETRY_CONNECT:  # one target only: nothing to retry on
                message = (
                    "The local worker did not accept the connection."
                    if isinstance(e, aiohttp.ConnectionTimeoutError)
                    else f"The local worker is unreachable ({type(e).__name__})."
                )
                raise ApiError(502, message, code="worker_unavailable") from None
            raise

    def load_header(self) -> str:
        """`X-Loraplex-Load`: this pod's load and its version ("<requests at the worker> <version>")."""
        return f"{self.local_load} {self.load_version}"

    def busy(self) -> Upstream:
        """The answer to an idle probe while this pod's worker has work: refused at once, the router asks the next."""
        body = json.dumps(
            {"error": {"message": "This pod is busy.", "type": "server_error", "param": None, "code": "busy"}}
        ).encode()
        headers = {"Content-Type": "application/json", hdr.BUSY: "1", hdr.LOAD: self.load_header()}
        return Upstream(429, headers, body, 0.0, self.pod_name or "local")

    # -- plumbing -------------------------------------------------------------------------------------------------

    def _local_url(self, endpoint_name: str) -> str | None:
        """The worker's URL when `endpoint_name` is this pod, else None."""
        return self.worker_url if endpoint_name == self.pod_name else None

    @contextlib.contextmanager
    def _in_flight(self, name: str) -> Iterator[None]:
        self.outstanding[name] = self.outstanding.get(name, 0) + 1
        try:
            yield
        finally:
            n = self.outstanding[name] - 1
            if n:
                self.outstanding[name] = n
            else:
                del self.outstanding[name]

    @contextlib.contextmanager
    def _at_worker(self, local: bool) -> Iterator[None]:
        """Counts a request at this pod's own worker (`local_load`, what peers see as this pod's load)."""
        if not local:
            yield
            return
        self.local_load += 1
        self.load_version += 1
        try:
            yield
        finally:
            self.local_load -= 1
            self.load_version += 1

    def forward_headers(self, request: web.Request) -> dict[str, str]:
        headers = {h: request.headers[h] for h in FORWARD_REQUEST_HEADERS if h in request.headers}
        headers.setdefault("Content-Type", "application/json")
        headers[hdr.HOP] = self.hop_name
        return headers

    def _signed(self, headers: dict[str, str], request: web.Request, body: bytes, to: str) -> dict[str, str]:
        """`headers` plus the hop signature over this request to pod `to` ('' for the local worker); the receiver
        checks it was meant for it."""
        if self.hop_keys is None:
            return headers
        sig = self.hop_keys.sign(
            request.method, request.path_qs, headers.get(hdr.HOP, ""), headers.get(hdr.ROUTE, ""), body, to=to
        )
        return {**headers, hdr.HOP_AUTH: sig} if sig else headers

    @staticmethod
    def _with_auth(headers: dict[str, str], request: web.Request) -> dict[str, str]:
        auth = request.headers.get("Authorization")
        return {**headers, "Authorization": auth} if auth else headers

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float, endpoint: str) -> Upstream:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self.connect_timeout_s)
        t = time.monotonic()
        async with self.session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            data = await resp.read()
            return Upstream(resp.status, resp.headers, data, time.monotonic() - t, endpoint)


_NOT_PASSED_ON = frozenset(h.lower() for h in (hdr.ROUTER_MS, *hdr.INTERNAL_RESPONSE))


def respond(up: Upstream, t0: float, attempts: int | None = None, extra: dict[str, str] | None = None) -> web.Response:
    """The answer to pass on: the upstream's with the public X-Loraplex-* headers, the router's time, and `extra`."""
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in up.headers.items():
        if k.lower() in ("content-type", "retry-after") or (
            k.lower().startswith(hdr.PREFIX.lower()) and k.lower() not in _NOT_PASSED_ON
        ):
            headers[k] = v
    headers.setdefault(hdr.POD, up.endpoint)  # a peer sidecar already said who served it
    # Time this router added, plus what a peer router added on its side.
    router_ms = (time.monotonic() - t0 - up.seconds) * 1000 + (ms_header(up.headers, hdr.ROUTER_MS) or 0.0)
    headers[hdr.ROUTER_MS] = f"{router_ms:.3f}"
    if attempts is not None:
        headers[hdr.ATTEMPTS] = str(attempts)
    headers.update(extra or {})
    return web.Response(status=up.status, body=up.body, headers=headers)
