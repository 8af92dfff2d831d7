"""A small real HTTP peer for router tests: answers like a worker and echoes what it received.

    python tests/helpers/echo_server.py --port 18081 --name pod-0

POST /v1/generate and /v1/images/generations answer 200 JSON
{"servedBy", "path", "headers", "body"} with worker-style timing headers.
The request body can steer the answer, so one request can make only chosen
servers fail: {"echo": {"failOn": ["pod-1"], "status": 503, "delay": 0.2}}
(failOn absent = every server). GET /records lists what was received,
POST /records/clear forgets it, GET /readyz is 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web


def make_app(name: str) -> web.Application:
    records: list[dict] = []

    async def generate(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        records.append({"path": request.path, "headers": dict(request.headers), "body": body})
        echo = body.get("echo", {}) if isinstance(body, dict) else {}
        if echo.get("delay"):
            await asyncio.sleep(float(echo["delay"]))
        status = 200
        if "status" in echo and ("failOn" not in echo or name in echo["failOn"]):
            status = int(echo["status"])
        payload = {
            "servedBy": name,
            "path": request.path,
            "headers": dict(request.headers),
            "body": body,
            "rawBody": raw.decode(errors="replace"),
        }
        if status != 200:
            payload["error"] = {
                "message": f"echo {name} answers {status}",
                "type": "server_error",
                "param": None,
                "code": "echo",
            }
        headers = {
            "X-Loraplex-Queue-Ms": "1.0",
            "X-Loraplex-Swap-Tier": "echo",
            "X-Loraplex-Swap-Ms": "2.0",
            "X-Loraplex-Inference-Ms": "3.0",
            "X-Echo-Private": "not-forwarded",
        }
        return web.json_response(payload, status=status, headers=headers)

    async def list_records(request: web.Request) -> web.Response:
        return web.json_response(records)

    async def clear_records(request: web.Request) -> web.Response:
        records.clear()
        return web.json_response({"ok": True})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": name})

    app = web.Application()
    app.add_routes(
        [
            web.post("/v1/generate", generate),
            web.post("/v1/images/generations", generate),
            web.get("/records", list_records),
            web.post("/records/clear", clear_records),
            web.get("/readyz", ready),
            web.get("/healthz", ready),
        ]
    )
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="echo")
    args = p.parse_args()
    web.run_app(make_app(args.name), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
