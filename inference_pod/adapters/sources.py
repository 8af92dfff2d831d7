"""Fetch an adapter's safetensors file from its source into the local disk tier.

Sources: a local path (file, or a directory holding one .safetensors file),
an http(s) URL checked against its sha256, or a hub repo through
huggingface_hub (revision, filename, token). Pickle formats are refused by
name and by content. Failures raise `AdapterSourceError` with a message a
user can act on (never quoting file or response bytes).

A URL download that fails in a way a second try may well not repeat (a 5xx,
a connection refused or reset, a body cut short) is tried again within the
same fetch, a few times with a short backoff, inside the fetch's time limits. Nothing else
is retried: a 4xx, a timeout or a too-slow source (it already spent its time),
the size cap, a hash or format error.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inference_pod.adapters.formats import AdapterFormatError, check_safetensors_header
from loraplex.api.routing_table import AdapterEntry, HubSource, PathSource, UrlSource
from loraplex.egress import EgressRefused, check_host
from loraplex.progress import DirectoryProgress, Progress

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PREFERRED_NAMES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
RETRY_HTTP_STATUSES = frozenset({500, 502, 503, 504})  # the server's trouble, not the adapter's


class AdapterSourceError(Exception):
    """The adapter could not be fetched. `permanent` errors are remembered as bad; `retryable` ones (transient and
    cheap to try again: a 5xx, a refused or reset connection, a body cut short) are retried within the fetch."""

    def __init__(self, message: str, permanent: bool = True, retryable: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent and not retryable
        self.retryable = retryable


def _refuse_pickle(name: str) -> None:
    if name.endswith(PICKLE_SUFFIXES):
        raise AdapterSourceError(f"{name}: pickle-based files are refused; publish the adapter as .safetensors")
    if not name.endswith(".safetensors"):
        raise AdapterSourceError(f"{name}: only .safetensors adapter files are loaded")


def _pick_file(names: list[str]) -> str:
    safes = [n for n in names if n.endswith(".safetensors")]
    for pref in PREFERRED_NAMES:
        for n in safes:
            if n.rsplit("/", 1)[-1] == pref:
                return n
    if len(safes) == 1:
        return safes[0]
    if not safes:
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise AdapterSourceError(f"only pickle files found ({pickles[0]}); refused, use .safetensors")
        raise AdapterSourceError("no .safetensors file found in the adapter source")
    raise AdapterSourceError(f"several .safetensors files ({', '.join(sorted(safes)[:4])}); name one with filename")


def source_key(name: str, entry: AdapterEntry) -> str:
    """A stable key for the bytes this entry points at (changes when its source does)."""
    src = entry.source.model_dump_json()
    return hashlib.sha256(f"{name}|{entry.revision}|{src}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SourcePolicy:
    """Where adapter bytes may come from, and how long and how slow a download may be.

    - `allow_private`: URL sources may resolve to loopback, private, link-local (cloud metadata), CGNAT,
      multicast or reserved addresses. Off in production; tests and the local stack turn it on (their servers
      are on loopback).
    - `path_roots`: a path source must be an absolute path that resolves (symlinks included) under one of these
      directories; none: path sources are refused.
    - `ca_file`: a PEM bundle of CA certificates https sources are verified against, in addition to the
      system's (a private CA for an artifact server inside the cluster); re-read when the file changes (a
      mounted ConfigMap is updated in place). Hostnames are always checked.
    - download limits: connect time, time to the first byte (and between bytes), total time, and the minimum
      average throughput after `min_rate_grace_s`; the size cap is checked while streaming.
    - retries: up to `fetch_attempts` attempts of a URL download for retryable failures, `retry_backoff_s` apart
      (doubling), all within the one total time limit; no retry starts later than `retry_within_s` after the
      first attempt began (the worker sets it to its request deadline: a client is waiting).
    """

    allow_private: bool = False
    path_roots: tuple[Path, ...] = ()
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 30.0
    total_timeout_s: float = 600.0
    min_bytes_per_s: float = 64 * 1024
    min_rate_grace_s: float = 10.0
    max_redirects: int = 5
    fetch_attempts: int = 3
    retry_backoff_s: float = 0.25
    retry_within_s: float = 60.0
    ca_file: Path | None = None
    hub_endpoint: str | None = None  # hub sources' base URL (None: huggingface_hub's, HF_ENDPOINT)


class CaBundleError(ValueError):
    """The CA bundle file cannot be used (missing, unreadable, or no PEM certificate in it)."""


_TLS_CONTEXTS: dict[tuple[str, int, int], ssl.SSLContext] = {}


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The context https sources are verified with: the system CAs, plus `ca_file`'s when given.

    Cached per (path, mtime, size), so an updated bundle is used from the next connection on.
    """
    if ca_file is None:
        return ssl.create_default_context()
    try:
        st = ca_file.stat()
    except OSError as e:
        raise CaBundleError(f"CA bundle {ca_file}: {e.strerror or type(e).__name__}") from None
    key = (str(ca_file), st.st_mtime_ns, st.st_size)
    ctx = _TLS_CONTEXTS.get(key)
    if ctx is None:
        ctx = ssl.create_default_context()
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (ssl.SSLError, OSError, ValueError) as e:
            # The message never quotes the file's bytes.
            raise CaBundleError(f"CA bundle {ca_file}: no usable PEM certificate ({type(e).__name__})") from None
        _TLS_CONTEXTS.clear()  # one bundle per worker: keep only the current version
        _TLS_CONTEXTS[key] = ctx
    return ctx


def fetch_to_disk(
    name: str,
    entry: AdapterEntry,
    cache_dir: Path,
    max_bytes: int,
    timeout_s: float | None = None,
    policy: SourcePolicy | None = None,
) -> Path:
    """Return a local path to the adapter's .safetensors, fetching it into cache_dir if needed."""
    policy = policy or SourcePolicy()
    if timeout_s is not None:
        policy = replace(policy, connect_timeout_s=timeout_s, first_byte_timeout_s=timeout_s)
    src = entry.source
    if isinstance(src, PathSource):
        path = resolve_path_source(src.path, policy)
        _check_size(path, max_bytes)
        _check_header(path)
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{source_key(name, entry)}.safetensors"
    if target.exists():
        os.utime(target)  # LRU order for the disk tier
        return target
    if isinstance(src, UrlSource):
        _download_url_retrying(src, target, max_bytes, policy)
    elif isinstance(src, HubSource):
        _download_hub(src, target, max_bytes, policy.hub_endpoint)
    else:  # pragma: no cover - the table's discriminator admits nothing else
        raise AdapterSourceError(f"unknown source type {type(src).__name__}")
    try:
        _check_header(target)
    except AdapterSourceError:
        target.unlink(missing_ok=True)
        raise
    return target


def resolve_path_source(raw: str, policy: SourcePolicy) -> Path:
    """The file a path source names, confined to the policy's roots (after resolving symlinks)."""
    path = Path(raw)
    if not path.is_absolute():
        raise AdapterSourceError(f"path source {raw!r} must be an absolute path")
    if not policy.path_roots:
        raise AdapterSourceError("path sources are not allowed on this worker (no --adapter-path-root)")
    resolved = path.resolve()
    if resolved.is_dir():
        resolved = (resolved / _pick_file([p.name for p in resolved.iterdir() if p.is_file()])).resolve()
    roots = [r.resolve() for r in policy.path_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise AdapterSourceError(f"path source {raw!r} is outside the allowed adapter roots")
    if not resolved.exists():
        raise AdapterSourceError(f"path {raw} does not exist", permanent=False)
    _refuse_pickle(resolved.name)
    return resolved


def _check_size(path: Path, max_bytes: int) -> None:
    size = path.stat().st_size
    if size > max_bytes:
        raise AdapterSourceError(f"adapter file is {size} bytes, over the limit of {max_bytes}")


def _check_header(path: Path) -> None:
    try:
        check_safetensors_header(path)
    except AdapterFormatError as e:
        raise AdapterSourceError(str(e)) from e


def address_refusal(address: str, allow_private: bool) -> str | None:
    """Why a URL source may not connect to this IP address (None: it may)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is not a unicast address"
    if allow_private:
        return None
    for kind, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("shared (CGNAT)", ip in ipaddress.ip_network("100.64.0.0/10")),
    ):
        if hit:
            return f"{ip} is a {kind} address (allow with --allow-private-sources)"
    if not ip.is_global:
        return f"{ip} is not a public address (allow with --allow-private-sources)"
    return None


def _resolve_target(url: str, policy: SourcePolicy) -> tuple[urllib.parse.SplitResult, str]:
    """The URL's parts and the one address it may be fetched from (pinned: no second DNS answer is used)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AdapterSourceError(f"url source {_redact(url)} is not an absolute http(s) URL")
    try:
        check_host(parts.hostname)
    except EgressRefused as e:
        raise AdapterSourceError(f"url source refused: {e}") from e
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise AdapterSourceError(f"cannot resolve {parts.hostname}: {e}", permanent=False) from e
    addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
    for a in addresses:  # every answer must be allowed: a mixed answer is a rebinding attempt
        why = address_refusal(a, policy.allow_private)
        if why:
            raise AdapterSourceError(f"url source {parts.hostname} refused: {why}")
    return parts, addresses[0]


def _redact(url: str) -> str:
    """A URL for messages: no userinfo, no query (tokens live there)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _open(url: str, policy: SourcePolicy, deadline: float) -> tuple[http.client.HTTPConnection, Any, socket.socket]:
    """GET `url`, following same-scheme redirects to allowed targets only; (connection, response, socket)."""
    scheme = urllib.parse.urlsplit(url).scheme
    for _ in range(policy.max_redirects + 1):
        parts, address = _resolve_target(url, policy)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AdapterSourceError(f"GET {_redact(url)}: no answer within the total time limit", permanent=False)
        timeout = min(policy.connect_timeout_s, remaining)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            try:
                context = tls_context(policy.ca_file)
            except CaBundleError as e:
                raise AdapterSourceError(f"GET {_redact(url)}: {e}", permanent=False) from None
            conn = _PinnedHTTPSConnection(parts.hostname or "", port, address, timeout, context)
        else:
            conn = _PinnedHTTPConnection(parts.hostname or "", port, address, timeout)
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            conn.connect()
            sock = conn.sock  # the response keeps reading from it even after the connection lets go of it
            assert sock is not None
            sock.settimeout(min(policy.first_byte_timeout_s, max(0.01, deadline - time.monotonic())))
            conn.request("GET", path, headers={"User-Agent": "loraplex-worker", "Accept-Encoding": "identity"})
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            conn.close()
            if not location:
                raise AdapterSourceError(f"GET {_redact(url)} redirected without a Location")
            nxt = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(nxt).scheme != scheme:
                raise AdapterSourceError(
                    f"GET {_redact(url)} redirected to another scheme ({_redact(nxt)}); not followed"
                )
            url = nxt
            continue
        return conn, resp, sock
    raise AdapterSourceError(f"more than {policy.max_redirects} redirects")


def _download_url_retrying(src: UrlSource, target: Path, max_bytes: int, policy: SourcePolicy) -> None:
    """`_download_url`, tried again on retryable failures (see the module docstring), under one total deadline."""
    t0 = time.monotonic()
    deadline = t0 + policy.total_timeout_s
    attempts = max(1, policy.fetch_attempts)
    for attempt in range(1, attempts + 1):
        try:
            _download_url(src, target, max_bytes, policy, deadline)
            return
        except AdapterSourceError as e:
            delay = policy.retry_backoff_s * 2 ** (attempt - 1)
            resume = time.monotonic() + delay
            if not e.retryable or attempt == attempts or resume - t0 > policy.retry_within_s or resume >= deadline:
                if attempt == 1:
                    raise
                raise AdapterSourceError(f"{e} (attempt {attempt} of {attempts})", permanent=e.permanent) from e
            log.info("%s; attempt %d of %d in %.2fs", e, attempt + 1, attempts, delay)  # e names the URL
            time.sleep(delay)


def _download_url(
    src: UrlSource, target: Path, max_bytes: int, policy: SourcePolicy, deadline: float | None = None
) -> None:
    path_part = src.url.split("?", 1)[0]
    if path_part.endswith(PICKLE_SUFFIXES):
        _refuse_pickle(path_part)
    shown = _redact(src.url)
    digest = hashlib.sha256()
    t0 = time.monotonic()
    deadline = t0 + policy.total_timeout_s if deadline is None else deadline
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part")  # noqa: SIM115 - renamed into place
    conn: http.client.HTTPConnection | None = None
    try:
        with tmp:
            conn, resp, sock = _open(src.url, policy, deadline)
            if resp.status != 200:
                raise AdapterSourceError(
                    f"GET {shown} answered {resp.status}",
                    permanent=resp.status in (401, 403, 404, 410),
                    retryable=resp.status in RETRY_HTTP_STATUSES,
                )
            length = resp.getheader("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > max_bytes:
                raise AdapterSourceError(f"download is {expected} bytes, over the limit of {max_bytes} bytes")
            total = 0
            progress = Progress(f"adapter download {shown}", total=expected)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise AdapterSourceError(
                        f"GET {shown}: not complete within {policy.total_timeout_s:g}s", permanent=False
                    )
                elapsed = now - t0
                if elapsed > policy.min_rate_grace_s and total / elapsed < policy.min_bytes_per_s:
                    raise AdapterSourceError(
                        f"GET {shown}: too slow ({total / elapsed:.0f} B/s, minimum {policy.min_bytes_per_s:.0f})",
                        permanent=False,
                    )
                sock.settimeout(max(0.01, min(policy.first_byte_timeout_s, deadline - now)))
                chunk = resp.read1(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise AdapterSourceError(f"download exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                tmp.write(chunk)
                progress.update(total)
            progress.finish(total)
            if expected is not None and total != expected:
                # A transfer cut short says nothing about the adapter: try again (now, then later).
                raise AdapterSourceError(
                    f"GET {shown}: connection closed after {total} of {expected} bytes", retryable=True
                )
        if src.sha256 and digest.hexdigest() != src.sha256:
            raise AdapterSourceError(f"sha256 mismatch: expected {src.sha256}, got {digest.hexdigest()}")
        os.replace(tmp.name, target)
    except AdapterSourceError:
        raise
    except (http.client.HTTPException, OSError, TimeoutError, ValueError) as e:
        if time.monotonic() >= deadline - 0.05:
            raise AdapterSourceError(
                f"GET {shown}: not complete within {policy.total_timeout_s:g}s", permanent=False
            ) from e
        if isinstance(e, http.client.IncompleteRead):  # no bytes echoed: the message would quote them
            raise AdapterSourceError(f"GET {shown}: connection closed before the end", retryable=True) from e
        if isinstance(e, ssl.SSLCertVerificationError):  # an OSError too: before the retryable branch
            trusted = "the system CAs and the pool's CA bundle" if policy.ca_file else "the system CAs"
            hint = "" if policy.ca_file else " (a private CA: set the pool's spec.adapterSources.caBundle)"
            raise AdapterSourceError(
                f"GET {shown}: the server's TLS certificate is not trusted by {trusted}: "
                f"{e.verify_message or 'verification failed'}{hint}",
                permanent=False,
            ) from e
        if isinstance(e, TimeoutError):  # its time is spent: another try would wait as long again
            raise AdapterSourceError(f"GET {shown}: timed out ({e})", permanent=False) from e
        if isinstance(e, OSError):  # refused, reset, broken pipe (RemoteDisconnected too): an errno text only
            raise AdapterSourceError(f"cannot reach {shown}: {type(e).__name__}: {e}", retryable=True) from e
        # A malformed answer (BadStatusLine, LineTooLong, a bad chunk size): its text quotes the server's bytes.
        raise AdapterSourceError(f"GET {shown}: malformed HTTP answer ({type(e).__name__})", permanent=False) from e
    finally:
        if conn is not None:
            conn.close()
        Path(tmp.name).unlink(missing_ok=True)


def _download_hub(src: HubSource, target: Path, max_bytes: int, endpoint: str | None = None) -> None:
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    # No token_env: no token at all (huggingface_hub would otherwise read HF_TOKEN or a stored token by itself).
    token: str | bool = (os.environ.get(src.token_env) or False) if src.token_env else False
    if endpoint:
        try:
            check_host(urllib.parse.urlsplit(endpoint).hostname or "")
        except EgressRefused as e:
            raise AdapterSourceError(f"hub {src.repo}: endpoint refused: {e}", permanent=False) from e
    try:
        filename = src.filename
        if filename is None:
            api = huggingface_hub.HfApi(endpoint=endpoint)
            filename = _pick_file(api.list_repo_files(src.repo, revision=src.revision, token=token))
        _refuse_pickle(filename)
        with (
            tempfile.TemporaryDirectory(dir=target.parent) as tmpdir,
            DirectoryProgress(Path(tmpdir), f"adapter download hub {src.repo}@{src.revision}/{filename}"),
        ):
            local = huggingface_hub.hf_hub_download(
                src.repo, filename, revision=src.revision, token=token, cache_dir=tmpdir, endpoint=endpoint
            )
            _check_size(Path(local), max_bytes)
            shutil.copyfile(local, target)
    except AdapterSourceError:
        raise
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        # The status only: the hub's error text is the server's bytes.
        raise AdapterSourceError(
            f"hub {src.repo}@{src.revision}: HTTP {status}", permanent=status in (401, 403, 404)
        ) from e
    except Exception as e:  # network errors from the hub client come in many types
        raise AdapterSourceError(
            f"hub {src.repo}@{src.revision} unreachable ({type(e).__name__})", permanent=False
        ) from e
