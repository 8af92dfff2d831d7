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

from inference_pod.router.placement import choose_endpoint
from inference_pod.router.request import Resolved, route_header
from inference_pod.router.stats import RouterStats
from loraplex.api import headers as hdr
from loraplex.api.errors import ApiError
from loraplex.api.hopauth import HopKeys
from loraplex.api.routing_table import Endpoint, PoolEntry, RoutingTable
from loraplex.egress import aiohttp_trace_configs

RETRY_STATUSES = frozenset({429, 502, 503})
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

    `outstanding` counts in-flight requests per endpoint name (placement's least-outstanding choice reads it).
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
    ) -> None:
        self.stats = stats
        self.hop_keys = hop_keys
        self.worker_url = worker_url
        self.pod_name = pod_name
        self.hop_name = hop_name
        self.connect_timeout_s = connect_timeout_s
        self.max_attempts = max_attempts
        self.outstanding: dict[str, int] = {}
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
            key, replication = r.adapters[0], table.adapters[r.adapters[0]].replication
        else:  # the base model is warm everywhere: any pod is a home
            key, replication = f"pool:{r.pool}", len(ready)
        candidates = choose_endpoint(key, by_name, replication, self.outstanding, pool.load_bound)
        headers = self.forward_headers(request)
        headers[hdr.ROUTE] = route_header(table, r)
        last: Upstream | None = None
        last_error = ""
        attempts = 0
        for name in candidates[: max(1, self.max_attempts)]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            local_url = self._local_url(name)
            target = (local_url or by_name[name].url.rstrip("/")) + request.path_qs
            # Peers check the same bearer token; the local worker does not need it.
            hdrs = self._signed(headers if local_url else self._with_auth(headers, request), request, body)
            try:
                with self._in_flight(name):
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
        headers = self.forward_headers(request)
        headers[hdr.HOP] = hop
        if route:
            headers[hdr.ROUTE] = route
        headers = self._signed(headers, request, body)
        pool = "unknown"
        with contextlib.suppress(ValueError, KeyError, TypeError):
            pool = str(json.loads(route)["pool"]) if route else pool
        self.stats.served(pool)
        remaining = deadline - time.monotonic()
        name = self.pod_name or "local"
        try:
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

    def forward_headers(self, request: web.Request) -> dict[str, str]:
        headers = {h: request.headers[h] for h in FORWARD_REQUEST_HEADERS if h in request.headers}
        headers.setdefault("Content-Type", "application/json")
        headers[hdr.HOP] = self.hop_name
        return headers

    def _signed(self, headers: dict[str, str], request: web.Request, body: bytes) -> dict[str, str]:
        """`headers` plus the hop signature over this request (peers and the local worker check it)."""
        if self.hop_keys is None:
            return headers
        sig = self.hop_keys.sign(
            request.method, request.path_qs, headers.get(hdr.HOP, ""), headers.get(hdr.ROUTE, ""), body
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


def respond(up: Upstream, t0: float, attempts: int | None = None) -> web.Response:
    """The client's response: the upstream answer with the public X-Loraplex-* headers and the router's time."""
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in up.headers.items():
        if k.lower() in ("content-type", "retry-after") or (
            k.lower().startswith(hdr.PREFIX.lower()) and k.lower() != hdr.ROUTER_MS.lower()
        ):
            headers[k] = v
    headers.setdefault(hdr.POD, up.endpoint)  # a peer sidecar already said who served it
    # Time this router added, plus what a peer router added on its side.
    router_ms = (time.monotonic() - t0 - up.seconds) * 1000 + (ms_header(up.headers, hdr.ROUTER_MS) or 0.0)
    headers[hdr.ROUTER_MS] = f"{router_ms:.3f}"
    if attempts is not None:
        headers[hdr.ATTEMPTS] = str(attempts)
    return web.Response(status=up.status, body=up.body, headers=headers)
