"""The router sidecar: the only port an inference pod exposes (also the gateway Deployment).

    loraplex sidecar --port 8080 --worker-url http://127.0.0.1:8081 \
        --pod-name sdxl-0 --table-file table.json [--auth-tokens-file tokens]

A generation request (POST /v1/generate or /v1/images/generations) names a
`model` (a base model, pool, adapter or alias) and optionally more
`adapters: [{"name", "scale"}]`. The sidecar resolves them in the routing
table to a pool and canonical adapters, picks the pod with `placement`
(rendezvous homes of the first adapter, least outstanding, spill over a load
bound; a base-model request may go to any pod), and forwards the body
unchanged to that pod: its own worker when the pod is this one, else the
peer's sidecar, adding

- `X-Loraplex-Hop: <pod-name or "gateway">`: a request carrying it is served
  by the local worker only, never forwarded again (loop guard);
- `X-Loraplex-Route`: compact JSON {"pool", "model": canonical adapter of the
  `model` field or null, "adapters": {name: AdapterEntry JSON}, "names":
  {requested name or alias: canonical adapter}} so the worker knows where each
  adapter comes from.

Retries (the next candidate on a connection error or a 429/502/503 answer) are
`forwarding.classify`'s table; forwarding itself is `forwarding.Forwarder`.
A pool with no ready endpoint answers 503, unless the pool sets
activationTimeoutSeconds: then the request is held until a table update
brings a ready endpoint (the activator for pools scaled to zero).

Errors are OpenAI-shaped: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_pod.router.auth import TokenFile
from inference_pod.router.forwarding import Forwarder, respond, service_seconds
from inference_pod.router.request import resolve_request, route_header, validate_generation
from inference_pod.router.stats import DEFAULT_MAX_ADAPTER_SERIES, RouterStats
from inference_pod.router.table_source import (
    AsyncTable,
    ConfigMapTableSource,
    FileTableSource,
    TableSource,
)
from loraplex.api import headers as hdr
from loraplex.api.errors import ApiError
from loraplex.api.hopauth import HopAuthError, HopKeys
from loraplex.api.names import TABLE_LABEL_SELECTOR
from loraplex.api.routing_table import Endpoint, PoolEntry, RoutingTable
from loraplex.logs import setup_logging

log = logging.getLogger("loraplex.sidecar")

GENERATION_PATHS = ("/v1/generate", "/v1/images/generations")
WORKER_METRICS_TIMEOUT_S = 3.0
WORKER_METRICS_MAX_BYTES = 4 << 20
OPEN_PATHS = frozenset({"/v1/stats", "/v1/load", "/metrics", "/healthz", "/readyz"})
ROUTING_POLICIES = ("cost", "rendezvous")


@dataclass(frozen=True)
class SidecarConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    worker_url: str | None = None
    pod_name: str | None = None
    table_file: str | None = None
    table_configmaps: str | None = None
    table_label_selector: str = TABLE_LABEL_SELECTOR
    auth_tokens_file: str | None = None
    hop_key_file: str | None = None
    request_timeout_s: float = 300.0
    connect_timeout_s: float = 2.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_attempts: int = 4  # idle probes included (placement.attempt_plan)
    routing_policy: str | None = None  # None: each pool's `policy` from the routing table
    load_poll_s: float = 1.0  # how often peers' loads are read while routing (0: only from their answers)
    stats_window_s: float = 60.0
    metrics_max_adapters: int = DEFAULT_MAX_ADAPTER_SERIES  # (pool, adapter) pairs with a series of their own
    resident_limit: int = 1000  # adapter names per /v1/stats (the worker's /v1/resident); counts stay exact
    log_level: str | None = None  # None: $LORAPLEX_LOG_LEVEL, else INFO

    @property
    def mode(self) -> str:
        return "pod" if self.worker_url else "gateway"

    @property
    def hop_name(self) -> str:
        return self.pod_name or "gateway"


class Sidecar:
    """The router's state and HTTP handlers; `app` is the aiohttp application."""

    def __init__(self, config: SidecarConfig, source: TableSource, stats: RouterStats | None = None) -> None:
        self.config = config
        self.source = source
        self.stats = stats or RouterStats(
            pod=config.pod_name,
            mode=config.mode,
            window_s=config.stats_window_s,
            max_adapter_series=config.metrics_max_adapters,
        )
        self.tokens = TokenFile(config.auth_tokens_file) if config.auth_tokens_file else None
        self.worker_url = config.worker_url.rstrip("/") if config.worker_url else None
        self.hop_keys = HopKeys(config.hop_key_file) if config.hop_key_file else None
        if self.hop_keys is None:
            log.warning("no --hop-key-file: requests from peers (hops) are refused, and peers refuse ours")
        self.forwarder = Forwarder(
            self.stats,
            worker_url=self.worker_url,
            pod_name=config.pod_name,
            hop_name=config.hop_name,
            connect_timeout_s=config.connect_timeout_s,
            max_attempts=config.max_attempts,
            hop_keys=self.hop_keys,
            policy=config.routing_policy,
        )
        self._poller: asyncio.Task[None] | None = None
        self.view: AsyncTable | None = None
        self.session: aiohttp.ClientSession | None = None  # for the local worker's /readyz
        self._worker_ready: tuple[float, bool] = (0.0, False)
        self._resident: tuple[float, dict[str, Any] | None] = (float("-inf"), None)
        self._worker_metrics_cache: tuple[float, bytes] = (float("-inf"), b"")
        # Pools whose endpoints listed this pod in a table seen so far (kept while the pool exists).
        self._own_pools: frozenset[str] = frozenset()
        source.add_error_listener(self._on_table_error)
        self.app = self._build_app()

    # -- app wiring -------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[self._errors_middleware, self._auth_middleware]
        )
        app.add_routes(
            [
                *(web.post(path, self.generate) for path in GENERATION_PATHS),
                web.get("/v1/models", self.models),
                web.get("/v1/stats", self.stats_handler),
                web.get("/v1/load", self.load_handler),
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
            ]
        )
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self.view = AsyncTable(self.source, loop)
        self.view.on_change.append(self._table_loaded)
        self.view.on_change.append(self._remember_own_pools)
        # The first file load is synchronous I/O: keep it off the loop.
        await loop.run_in_executor(None, self.source.start)
        if self.view.table is None and self.source.table is not None:
            self.view.table = self.source.table
        if self.view.table is not None:
            self._table_loaded(self.view.table)
            self._remember_own_pools(self.view.table)
        await self.forwarder.start()
        self.session = self.forwarder.session
        if self.config.load_poll_s > 0:
            self._poller = asyncio.create_task(self._poll_loads())

    async def _cleanup(self, app: web.Application) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.forwarder.close()
        await asyncio.get_running_loop().run_in_executor(None, self.source.stop)

    def _on_table_error(self, message: str) -> None:
        # Called from the source's thread; the counter is thread-safe enough for a +1.
        self.stats.table_error()

    @web.middleware
    async def _errors_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return ApiError(e.status, e.reason, code=e.reason.lower().replace(" ", "_")).response()
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return ApiError(500, "Internal error in the router.", code="internal_error").response()

    @web.middleware
    async def _auth_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if (
            self.tokens is not None
            and request.path not in OPEN_PATHS
            and not self.tokens.allows(request.headers.get("Authorization"))
        ):
            raise ApiError(
                401,
                "Missing or invalid bearer token.",
                param=None,
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="loraplex"'},
            )
        return await handler(request)

    # -- open endpoints ------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readiness(self) -> tuple[bool, RoutingTable | None, bool | None]:
        """(ready, the table, whether the local worker is ready: None in gateway mode)."""
        table = self.view.table if self.view else None
        worker_ok = await self._local_worker_ready() if self.worker_url else None
        return table is not None and worker_ok is not False, table, worker_ok

    async def readyz(self, request: web.Request) -> web.Response:
        ready, table, worker_ok = await self._readiness()
        body = {
            "status": "ready" if ready else "not ready",
            "mode": self.config.mode,
            "table": table is not None,
            "generation": table.generation if table else None,
            "worker": worker_ok,
        }
        return web.json_response(body, status=200 if ready else 503)

    async def _local_worker_ready(self) -> bool:
        checked, ok = self._worker_ready
        now = time.monotonic()
        if now - checked < 1.0:  # the kubelet and the tests poll often; the worker need not hear each one
            return ok
        try:
            assert self.session is not None and self.worker_url is not None
            async with self.session.get(self.worker_url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                ok = r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self._worker_ready = (now, ok)
        return ok

    async def stats_handler(self, request: web.Request) -> web.Response:
        doc = self.stats.snapshot()
        if self.worker_url:
            doc["resident"] = await self._local_resident()
        return web.json_response(doc)

    async def _local_resident(self) -> dict[str, Any] | None:
        """The local worker's `/v1/resident` (bounded; cached a second), or None when it did not answer."""
        checked, doc = self._resident
        now = time.monotonic()
        if now - checked < 1.0:
            return doc
        doc = None
        try:
            assert self.session is not None and self.worker_url is not None
            url = f"{self.worker_url}/v1/resident?limit={self.config.resident_limit}"
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    body = await r.json(content_type=None)
                    doc = body if isinstance(body, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.debug("worker /v1/resident unavailable: %s", e)
        self._resident = (now, doc)
        return doc

    async def load_handler(self, request: web.Request) -> web.Response:
        """This pod's requests at its worker: the peers' view of its load (cost routing)."""
        fw = self.forwarder
        return web.json_response({"pod": self.config.pod_name, "load": fw.local_load, "version": fw.load_version})

    async def _poll_loads(self) -> None:
        """Every load_poll_s while this sidecar routes, read the peers' loads of the pools it routes by cost."""
        interval = self.config.load_poll_s
        timeout = aiohttp.ClientTimeout(total=max(0.1, min(1.0, interval)))
        while True:
            await asyncio.sleep(interval)
            table = self.view.table if self.view else None
            # Idle routers ask nobody (100 pods polling each other every second is for busy pools only).
            if table is None or time.monotonic() - self.forwarder.last_routed > 30.0:
                continue
            peers = {
                e.name: e.url.rstrip("/")
                for pool in table.pools.values()
                if (self.config.routing_policy or pool.policy) == "cost"
                for e in pool.endpoints
                if e.ready and e.name != self.config.pod_name
            }
            self.forwarder.loads.forget(e.name for pool in table.pools.values() for e in pool.endpoints)
            await asyncio.gather(*(self._poll_one(name, url, timeout) for name, url in peers.items()))

    async def _poll_one(self, name: str, url: str, timeout: aiohttp.ClientTimeout) -> None:
        assert self.session is not None
        try:
            async with self.session.get(url + "/v1/load", timeout=timeout) as r:
                if r.status == 200:
                    doc = await r.json()
                    self.forwarder.loads.report(name, int(doc["load"]), int(doc.get("version", -1)))
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            pass  # an unreachable peer keeps its last report until that ages out

    async def metrics(self, request: web.Request) -> web.Response:
        """This sidecar's metrics, then (pod mode) its worker's: the worker listens on loopback only."""
        ready, _, _ = await self._readiness()
        self.stats.m_ready.set(1 if ready else 0)
        worker = await self._worker_metrics() if self.worker_url else b""
        self.stats.m_worker_metrics_up.set(1 if worker else 0)
        body = generate_latest(self.stats.registry) + worker
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _worker_metrics(self) -> bytes:
        """The worker's /metrics text (at most WORKER_METRICS_MAX_BYTES), or b"" when it did not answer in time.

        Cached for a second: /metrics is open, and a client polling it must not turn into load on the worker.
        """
        checked, body = self._worker_metrics_cache
        now = time.monotonic()
        if now - checked < 1.0:
            return body
        body = await self._read_worker_metrics()
        self._worker_metrics_cache = (time.monotonic(), body)
        return body

    async def _read_worker_metrics(self) -> bytes:
        try:
            assert self.session is not None and self.worker_url is not None
            timeout = aiohttp.ClientTimeout(total=WORKER_METRICS_TIMEOUT_S)
            async with self.session.get(self.worker_url + "/metrics", timeout=timeout) as r:
                if r.status != 200:
                    return b""
                chunks, size = [], 0
                async for chunk in r.content.iter_chunked(64 << 10):
                    size += len(chunk)
                    if size > WORKER_METRICS_MAX_BYTES:
                        log.warning("the worker's /metrics is over %d bytes; left out", WORKER_METRICS_MAX_BYTES)
                        return b""
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError):
            return b""
        body = b"".join(chunks)
        return body if body.endswith(b"\n") else b""  # a cut-off exposition would spoil the whole scrape

    # -- public API ----------------------------------------------------------

    def _table(self) -> RoutingTable:
        table = self.view.table if self.view else None
        if table is None:
            raise ApiError(
                503, "The routing table is not loaded yet.", code="table_not_loaded", headers={"Retry-After": "1"}
            )
        return table

    async def models(self, request: web.Request) -> web.Response:
        table = self._table()
        data = []
        for pool_name, pool in sorted(table.pools.items()):
            for name in sorted({pool_name, pool.base_model, *pool.aliases} - {""}):
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "loraplex",
                        "pool": pool_name,
                        "adapter": None,
                    }
                )
        for ad_name, ad in sorted(table.adapters.items()):
            for name in (ad_name, *sorted(ad.aliases)):
                data.append(
                    {
                        "id": name,
                        "object": "model",
                        "created": 0,
                        "owned_by": "loraplex",
                        "pool": ad.pool,
                        "adapter": ad_name,
                    }
                )
        return web.json_response({"object": "list", "data": data})

    async def _read_body(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(
                413, f"The request body exceeds {self.config.max_body_bytes} bytes.", code="body_too_large"
            ) from None

    async def generate(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        body = await self._read_body(request)
        if hdr.HOP in request.headers:
            self._authenticate_hop(request, body)
            return await self._serve_hop(request, body, t0)
        # Public edge: no internal header of a client's goes further (forward_headers passes none on).
        try:
            payload = json.loads(body)
        except ValueError:
            self.stats.rejected(400)
            raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
        try:
            model, extra = validate_generation(payload)
            table = self._table()
            resolved = resolve_request(table, model, extra)
        except ApiError as e:
            self.stats.rejected(e.status)
            raise
        # Per-adapter counters for registered adapters only: on-demand names come from clients (unbounded labels).
        counted = [a for a in resolved.adapters if a not in resolved.on_demand]
        self.stats.request_started(resolved.pool, counted)
        status, service_s, upstream_s = 500, None, 0.0
        try:
            deadline = t0 + self.config.request_timeout_s
            table, pool, ready = await self._ready_endpoints(table, resolved.pool, deadline)
            up, attempts = await self.forwarder.route(request, body, table, pool, ready, resolved, deadline)
            status, service_s, upstream_s = up.status, service_seconds(up), up.seconds
            return respond(up, t0, attempts)
        except ApiError as e:
            status = e.status
            raise
        finally:
            total = time.monotonic() - t0
            self.stats.request_finished(
                resolved.pool,
                counted,
                status,
                total,
                service_s,
                overhead_s=total - upstream_s if upstream_s else None,
            )

    def _table_loaded(self, table: RoutingTable) -> None:
        self.stats.table_loaded(table.generation, len(table.adapters), self.source.last_reload_s)

    def _remember_own_pools(self, table: RoutingTable) -> None:
        if not (self.worker_url and self.config.pod_name):
            return
        listed = {name for name, p in table.pools.items() if any(e.name == self.config.pod_name for e in p.endpoints)}
        self._own_pools = frozenset(listed | (self._own_pools & set(table.pools)))

    async def _own_endpoint(self, pool_name: str) -> Endpoint | None:
        """This pod as the pool's endpoint of last resort, when a table once listed it and its worker is ready.

        A table can name no ready endpoint while this pod serves: the pod is draining, or Kubernetes marked
        it NotReady for a moment (a control plane back from an outage longer than the node grace period
        marks every pod of the node so until the kubelet reports again). Its own worker's readiness is local
        knowledge; answering 503 to a request that reached a working pod helps nobody."""
        if pool_name not in self._own_pools or not await self._local_worker_ready():
            return None
        assert self.worker_url is not None and self.config.pod_name is not None
        return Endpoint(name=self.config.pod_name, url=self.worker_url)

    async def _ready_endpoints(
        self, table: RoutingTable, pool_name: str, deadline: float
    ) -> tuple[RoutingTable, PoolEntry, list[Endpoint]]:
        """The pool's ready endpoints; holds the request (activator) while there are none, if allowed."""
        pool = table.pools[pool_name]
        ready = [e for e in pool.endpoints if e.ready]
        if ready:
            return table, pool, ready
        own = await self._own_endpoint(pool_name)
        if own is not None:
            self.stats.served_without_table_endpoint(pool_name)
            return table, pool, [own]
        hold_until = min(deadline, time.monotonic() + pool.activation_timeout_s)
        if pool.activation_timeout_s <= 0 or self.view is None:
            raise ApiError(
                503,
                f"Pool '{pool_name}' has no ready endpoint.",
                code="no_ready_endpoint",
                headers={"Retry-After": "5"},
            )
        self.stats.waiting(pool_name, +1)
        try:
            while (remaining := hold_until - time.monotonic()) > 0:
                await self.view.wait_changed(remaining)
                current = self.view.table
                entry = current.pools.get(pool_name) if current else None
                if current is None or entry is None:
                    raise ApiError(
                        404,
                        f"Pool '{pool_name}' was removed while the request waited.",
                        param="model",
                        code="model_not_found",
                    )
                ready = [e for e in entry.endpoints if e.ready]
                if ready:
                    return current, entry, ready
        finally:
            self.stats.waiting(pool_name, -1)
        raise ApiError(
            503,
            f"Pool '{pool_name}' has no ready endpoint after waiting {pool.activation_timeout_s:g}s for one.",
            code="no_ready_endpoint",
            headers={"Retry-After": "5"},
        )

    def _authenticate_hop(self, request: web.Request, body: bytes) -> None:
        """A hop must be signed with the pool's key; anything else is a client forging internal headers (401)."""
        try:
            if self.hop_keys is None:
                raise HopAuthError("this router has no hop key")
            self.hop_keys.verify(
                request.headers.get(hdr.HOP_AUTH),
                request.method,
                request.path_qs,
                request.headers.get(hdr.HOP, ""),
                request.headers.get(hdr.ROUTE, ""),
                body,
                receiver=self.config.pod_name or "",
            )
        except HopAuthError as e:
            self.stats.rejected(401)
            log.warning("refused an unauthenticated hop from %s: %s", request.remote, e)
            raise ApiError(
                401,
                f"Unauthenticated internal request: {e}. The {hdr.PREFIX}* request headers are reserved for "
                "loraplex routers.",
                code="invalid_hop_signature",
            ) from None

    def _route_for(self, body: bytes) -> str | None:
        table = self.view.table if self.view else None
        try:
            model, extra = validate_generation(json.loads(body))
            return route_header(table, resolve_request(table, model, extra)) if table else None
        except (ValueError, ApiError):
            return None

    async def _serve_hop(self, request: web.Request, body: bytes, t0: float) -> web.Response:
        """A request another router already placed here: local worker only, never forwarded again."""
        # A router sent its route along; a hand-made hop request gets ours, if the model resolves here.
        route = request.headers.get(hdr.ROUTE) or self._route_for(body)
        up = await self.forwarder.serve_hop(request, body, route, t0 + self.config.request_timeout_s)
        # Internal to the routers (the entry sidecar drops them): this pod's load now, and a refused probe.
        extra = {hdr.LOAD: self.forwarder.load_header()}
        if hdr.BUSY in up.headers:
            extra[hdr.BUSY] = "1"
        return respond(up, t0, extra=extra)


def parse_args(argv: list[str] | None) -> SidecarConfig:
    p = argparse.ArgumentParser(
        prog="loraplex sidecar",
        description="loraplex router sidecar (or, without --worker-url, the gateway)",
    )
    d = SidecarConfig()  # the defaults are the config's
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--worker-url", help="this pod's worker, e.g. http://127.0.0.1:8081; absent = gateway mode")
    p.add_argument(
        "--pod-name",
        default=os.environ.get("POD_NAME"),
        help="this pod's endpoint name in the routing table (default: $POD_NAME)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--table-file", help="routing table JSON file, re-read when it changes")
    src.add_argument(
        "--table-configmaps", metavar="NAMESPACE", help="watch the routing-table ConfigMaps of this namespace"
    )
    p.add_argument("--table-label-selector", default=d.table_label_selector)
    p.add_argument("--auth-tokens-file", help="bearer tokens, one per line; enables auth on the public API")
    p.add_argument(
        "--hop-key-file",
        help="the pool's hop keys (file, one per line, or a directory of such files; sign with the first): "
        "authenticates requests between sidecars and to the local worker",
    )
    p.add_argument(
        "--request-timeout", type=float, default=d.request_timeout_s, help="seconds per client request, all tries"
    )
    p.add_argument("--connect-timeout", type=float, default=d.connect_timeout_s, help="seconds to connect to a pod")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument(
        "--max-attempts", type=int, default=d.max_attempts, help="pods tried per request (idle probes included)"
    )
    p.add_argument(
        "--routing-policy",
        choices=ROUTING_POLICIES,
        default=None,
        help="how pods are chosen: cost (least expected wait on a shared in-flight view, idle probes) or "
        "rendezvous (homes' least own outstanding, spill over loadBound); default: each pool's routing.policy",
    )
    p.add_argument(
        "--load-poll-interval",
        type=float,
        default=d.load_poll_s,
        help="seconds between reads of the peers' loads while routing by cost (0: only from their answers)",
    )
    p.add_argument("--stats-window", type=float, default=d.stats_window_s, help="seconds of the request-rate window")
    p.add_argument(
        "--metrics-max-adapters",
        type=int,
        default=d.metrics_max_adapters,
        help="(pool, adapter) pairs with a /metrics series of their own; the rest count as adapter=_other",
    )
    p.add_argument("--log-level", default=None, help="default: $LORAPLEX_LOG_LEVEL, else INFO")
    a = p.parse_args(argv)
    if a.metrics_max_adapters < 0:
        p.error("--metrics-max-adapters must be 0 or more")
    if a.worker_url and not a.pod_name:
        p.error("--pod-name (or $POD_NAME) is required with --worker-url")
    return SidecarConfig(
        host=a.host,
        port=a.port,
        worker_url=a.worker_url,
        pod_name=a.pod_name,
        table_file=a.table_file,
        table_configmaps=a.table_configmaps,
        table_label_selector=a.table_label_selector,
        auth_tokens_file=a.auth_tokens_file,
        hop_key_file=a.hop_key_file,
        request_timeout_s=a.request_timeout,
        connect_timeout_s=a.connect_timeout,
        max_body_bytes=a.max_body_bytes,
        max_attempts=a.max_attempts,
        routing_policy=a.routing_policy,
        load_poll_s=a.load_poll_interval,
        stats_window_s=a.stats_window,
        metrics_max_adapters=a.metrics_max_adapters,
        log_level=a.log_level,
    )


def make_source(config: SidecarConfig) -> TableSource:
    if config.table_file:
        return FileTableSource(config.table_file)
    assert config.table_configmaps
    return ConfigMapTableSource(config.table_configmaps, config.table_label_selector)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level)
    sidecar = Sidecar(config, make_source(config))
    log.info("sidecar (%s mode, pod %s) on %s:%d", config.mode, config.pod_name, config.host, config.port)
    web.run_app(
        sidecar.app,
        host=config.host,
        port=config.port,
        access_log=None,
        print=None,
        shutdown_timeout=min(30.0, config.request_timeout_s),
    )
    return 0
