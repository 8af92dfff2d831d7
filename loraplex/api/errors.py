"""The error body every loraplex HTTP answer uses: the OpenAI error shape, naming the field at fault.

    {"error": {"message": "...", "type": "invalid_request_error" | "server_error", "param": ..., "code": ...}}

Raised by the worker and the sidecar; `ApiError.response()` turns one into an aiohttp response (aiohttp is
imported there, so reading the shape needs no web framework).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web


class ApiError(Exception):
    """An error that becomes one HTTP response naming the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code or _default_code(status)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> web.Response:
        from aiohttp import web  # only the servers call this; the shape itself needs no web framework

        return web.Response(
            status=self.status, text=json.dumps(self.body()), content_type="application/json", headers=self.headers
        )


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an error answer with this status."""
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code or _default_code(status)}}


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
