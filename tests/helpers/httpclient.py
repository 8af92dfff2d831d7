"""Tiny synchronous HTTP client for process tests (stdlib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


def request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 60.0
) -> Reply:
    """Send one request; any HTTP status comes back as a Reply (no exception for 4xx/5xx)."""
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and not req.has_header("Content-type"):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, dict(r.headers.items()), r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers.items()), e.read())


def post(url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 60.0) -> Reply:
    return request("POST", url, body, headers, timeout)


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    return request("GET", url, None, headers, timeout)
