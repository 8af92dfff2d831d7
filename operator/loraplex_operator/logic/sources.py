"""Which adapter sources a pool admits (an SSRF guard at admission). Pure: no DNS, no I/O.

- `url` sources: the host must not be an address on the cluster's or the
  node's own networks (loopback, private, link-local such as the cloud
  metadata service 169.254.169.254, unspecified, reserved, multicast, and
  the same written as an IPv4-mapped IPv6 address or in the legacy numeric
  forms `2130706433` / `0x7f.1`), nor a name that means one of them
  (`localhost`, `*.localhost`, `*.svc`, `*.cluster.local`, `*.internal`,
  `kubernetes`, `kubernetes.default`, ...), unless the pool sets
  `spec.adapterSources.allowPrivateUrls`. The apiserver's in-cluster
  address is a private one and its names are in that list.
  (Names that resolve to such addresses are the worker's fetch guard's job.)
- `path` sources: absolute, normalised, and under one of the pool's
  `spec.adapterSources.pathRoots` (default `/models/loras`).

Both the adapter's status (controllers/adapter_controller.py) and the routing
table (logic/routes.py) use `source_problem`, so a refused source is never
routed.
"""

from __future__ import annotations

import ipaddress
import posixpath
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

from loraplex_operator.logic.specs import AdapterSource

DEFAULT_PATH_ROOTS: tuple[str, ...] = ("/models/loras",)
REASON = "SourceNotAllowed"

_BLOCKED_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "kubernetes",
        "kubernetes.default",
        "metadata",
        "metadata.google.internal",
        "instance-data",
    }
)
_BLOCKED_SUFFIXES = (".localhost", ".svc", ".cluster.local", ".internal", ".local", ".localdomain")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(part for part in host.split(".")) and host.replace(".", "").replace("x", "").isalnum():
        try:  # inet_aton's legacy forms ("2130706433", "0x7f.1", "127.1") resolve without DNS
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
        or ip.is_multicast
        or ip in ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, used by some cluster networks
    )


def url_problem(url: str, allow_private: bool = False) -> str | None:
    """Why `spec.source.url` is refused, or None."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".").lower()
        _ = parts.port  # a malformed port raises
    except ValueError as e:
        return f"spec.source.url {url!r} is not a valid URL: {e}"
    if parts.scheme != "https":
        return f"spec.source.url must be an https:// URL, got {parts.scheme or 'none'!r}"
    if not host:
        return f"spec.source.url {url!r} has no host"
    if parts.username is not None or parts.password is not None:
        return "spec.source.url must not carry credentials (user:password@)"
    if allow_private:
        return None
    ip = _ip(host)
    if ip is not None and _private(ip):
        return (
            f"spec.source.url host {host} is a loopback, private or link-local address; "
            "set spec.adapterSources.allowPrivateUrls on the pool to allow it"
        )
    if host in _BLOCKED_NAMES or host.endswith(_BLOCKED_SUFFIXES):
        return (
            f"spec.source.url host {host!r} names this machine or the cluster's own network; "
            "set spec.adapterSources.allowPrivateUrls on the pool to allow it"
        )
    return None


def path_problem(path: str, roots: Sequence[str] = DEFAULT_PATH_ROOTS) -> str | None:
    """Why `spec.source.path` is refused, or None."""
    if not path.startswith("/"):
        return f"spec.source.path {path!r} must be an absolute path"
    if "\x00" in path or any(part == ".." for part in path.split("/")):
        return f"spec.source.path {path!r} must not contain '..'"
    norm = posixpath.normpath(path)
    for root in roots:
        r = posixpath.normpath(root)
        if r == "/" or norm == r or norm.startswith(r + "/"):
            return None
    allowed = ", ".join(roots) or "(none)"
    return f"spec.source.path {path!r} is outside the pool's spec.adapterSources.pathRoots ({allowed})"


def source_problem(
    src: AdapterSource, allow_private_urls: bool = False, path_roots: Sequence[str] = DEFAULT_PATH_ROOTS
) -> str | None:
    """Why the pool refuses this source (a message naming the field), or None. Hub sources: None."""
    if src.type == "url" and src.url:
        return url_problem(src.url, allow_private_urls)
    if src.type == "path" and src.path:
        return path_problem(src.path, path_roots)
    return None
