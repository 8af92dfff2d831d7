"""A stand-in for the Hugging Face Hub on loopback: the part of its HTTP API the real huggingface_hub client uses.

- `GET /api/models/{owner}/{repo}[/revision/{rev}]`: model info (id, sha, private, gated, disabled, tags, cardData
  with base_model, siblings with rfilename and size and lfs); 404 with `X-Error-Code: RepoNotFound` or
  `RevisionNotFound`, 401 `RepoNotFound` for a private repo without a token (as the hub answers), 5xx on demand;
- `HEAD`/`GET /{owner}/{repo}/resolve/{rev}/{file}`: a 302 to `/cdn/{sha256}` with `X-Repo-Commit`,
  `X-Linked-Etag` and `X-Linked-Size` (what hf_hub_download reads for an LFS file) on another loopback host
  (127.0.0.2, the "CDN": the client follows redirects within the hub's host only, and reads the file's metadata from
  the redirect itself), then the bytes with `Content-Length` and `ETag`.

Every request is counted (`requests`, `count(kind)`), so a test can check how many hub look-ups a flood cost.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    base_model: str | list[str] | None = None
    tags: tuple[str, ...] = ("lora", "diffusers")
    gated: str | bool = False
    private: bool = False
    sha: str = ""
    revisions: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit
    fail_status: int | None = None  # answer every model-info request with this status (e.g. 500)
    size_override: dict[str, int] = field(default_factory=dict)  # report another size in the metadata

    def commit(self, revision: str) -> str | None:
        if revision in ("main", self.sha):
            return self.sha
        if revision in self.revisions.values():
            return revision
        return self.revisions.get(revision)


_INFO = re.compile(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_CDN = re.compile(r"^/cdn/([0-9a-f]{64})$")


class FakeHub:
    """Start with `with FakeHub() as hub:`; `hub.url` is the endpoint to give the client (HF_ENDPOINT)."""

    def __init__(self, token: str = "hf_test_token", latency_s: float = 0.0) -> None:
        self.latency_s = latency_s  # added to every answer: a remote hub's round trip (benchmarks)
        self.repos: dict[str, FakeRepo] = {}
        self.token = token
        self.requests: list[tuple[str, str]] = []
        self.authorized: list[bool] = []
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self, body=True)

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.cdn = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.cdn.daemon_threads = True
        self.cdn_url = f"http://127.0.0.2:{self.cdn.server_address[1]}"
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.httpd, self.cdn)]

    def add(self, repo_id: str, repo: FakeRepo) -> FakeRepo:
        if not repo.sha:
            repo.sha = hashlib.sha1(repo_id.encode()).hexdigest()
        for data in repo.files.values():
            self._blobs[hashlib.sha256(data).hexdigest()] = data
        self.repos[repo_id] = repo
        return repo

    def count(self, kind: str, repo_id: str | None = None) -> int:
        """Requests of one kind ('info', 'resolve', 'cdn'), optionally for one repo."""
        with self._lock:
            return sum(1 for k, r in self.requests if k == kind and (repo_id is None or r == repo_id))

    def _record(self, kind: str, repo_id: str, authorized: bool) -> None:
        with self._lock:
            self.requests.append((kind, repo_id))
            self.authorized.append(authorized)

    def _handle(self, h: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)
        path = urllib.parse.urlsplit(h.path).path
        authorized = h.headers.get("Authorization") == f"Bearer {self.token}"
        if m := _INFO.match(path):
            repo_id, revision = m[1], urllib.parse.unquote(m[2] or "main")
            self._record("info", repo_id, authorized)
            self._info(h, repo_id, revision, authorized, body)
        elif m := _RESOLVE.match(path):
            repo_id, revision, filename = m[1], urllib.parse.unquote(m[2]), urllib.parse.unquote(m[3])
            self._record("resolve", repo_id, authorized)
            self._resolve(h, repo_id, revision, filename, authorized)
        elif m := _CDN.match(path):
            self._record("cdn", m[1], authorized)
            data = self._blobs.get(m[1])
            if data is None:
                self._send(h, 404, b"", {})
            else:
                self._send(h, 200, data if body else b"", {"ETag": f'"{m[1]}"'}, length=len(data))
        else:
            self._record("other", path, authorized)
            self._error(h, 404, "EntryNotFound", body)

    def _allowed(self, repo: FakeRepo, authorized: bool) -> bool:
        return authorized or not (repo.private or repo.gated)

    def _info(
        self, h: http.server.BaseHTTPRequestHandler, repo_id: str, rev: str, authorized: bool, body: bool
    ) -> None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not authorized):
            self._error(h, 401 if repo is not None or not authorized else 404, "RepoNotFound", body)
            return
        if repo.fail_status is not None:
            self._send(h, repo.fail_status, b'{"error": "<script>internal</script>"}' if body else b"", {})
            return
        commit = repo.commit(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", body)
            return
        card: dict[str, object] = {"tags": list(repo.tags)}
        tags = list(repo.tags)
        if repo.base_model is not None:
            card["base_model"] = repo.base_model
            bases = [repo.base_model] if isinstance(repo.base_model, str) else repo.base_model
            tags += [f"base_model:adapter:{b}" for b in bases]
        doc = {
            "_id": commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit,
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags,
            "cardData": card,
            "library_name": "diffusers",
            "siblings": [
                {
                    "rfilename": name,
                    "size": repo.size_override.get(name, len(data)),
                    "blobId": hashlib.sha1(data).hexdigest(),
                    "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
                }
                for name, data in sorted(repo.files.items())
            ],
        }
        raw = json.dumps(doc).encode()
        self._send(h, 200, raw if body else b"", {"Content-Type": "application/json"}, length=len(raw))

    def _resolve(
        self, h: http.server.BaseHTTPRequestHandler, repo_id: str, rev: str, filename: str, authorized: bool
    ) -> None:
        repo = self.repos.get(repo_id)
        if repo is None or not self._allowed(repo, authorized):
            self._error(h, 401, "RepoNotFound" if repo is None or repo.private else "GatedRepo", False)
            return
        commit = repo.commit(rev)
        if commit is None:
            self._error(h, 404, "RevisionNotFound", False)
            return
        data = repo.files.get(filename)
        if data is None:
            self._error(h, 404, "EntryNotFound", False)
            return
        digest = hashlib.sha256(data).hexdigest()
        headers = {
            "Location": f"{self.cdn_url}/cdn/{digest}",
            "X-Repo-Commit": commit,
            "X-Linked-Etag": f'"{digest}"',
            "X-Linked-Size": str(len(data)),
            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
        }
        self._send(h, 302, b"", headers)

    def _error(self, h: http.server.BaseHTTPRequestHandler, status: int, code: str, body: bool) -> None:
        raw = json.dumps({"error": f"{code}: <b>server text a client must not echo</b>"}).encode()
        headers = {"X-Error-Code": code, "X-Error-Message": code, "Content-Type": "application/json"}
        self._send(h, status, raw if body else b"", headers, length=len(raw))

    @staticmethod
    def _send(
        h: http.server.BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str], length: int = -1
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(length if length >= 0 else len(data)))
        h.end_headers()
        if data:
            h.wfile.write(data)

    def __enter__(self) -> FakeHub:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self.httpd, self.cdn):
            server.shutdown()
            server.server_close()
