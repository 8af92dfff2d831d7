"""API errors shared by the worker and the sidecar, in the OpenAI error shape."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An error that becomes one HTTP response naming the field at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or _default_code(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if 400 <= self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=json.dumps(self.body()), content_type="application/json",
                            headers=self.headers)


def _default_code(status: int) -> str:
    return {
        400: "invalid_request",
        401: "unauthorized",
        404: "model_not_found",
        413: "request_too_large",
        422: "invalid_adapter",
        429: "queue_full",
        502: "upstream_error",
        503: "unavailable",
        504: "deadline_exceeded",
    }.get(status, "error")
