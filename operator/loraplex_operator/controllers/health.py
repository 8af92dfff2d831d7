"""Liveness endpoint: GET /healthz (and /readyz) on the operator's port; GET /metrics for Prometheus.

Alive means: the event loop answers (this handler runs) and no core task has
died. A follower waiting for the lease is alive too; /healthz reports its role.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        state: Callable[[], dict[str, Any]],
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        self.host, self.port, self.state, self.metrics = host, port, state, metrics
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._healthz)
        if self.metrics is not None:
            app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        state = self.state()
        ok = bool(state.get("ok", True))
        return web.Response(
            status=200 if ok else 503, text=json.dumps(state, sort_keys=True), content_type="application/json"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.metrics is not None
        # Prometheus' text format 0.0.4 (what prometheus_client writes).
        return web.Response(body=self.metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})
