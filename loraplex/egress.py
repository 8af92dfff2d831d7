"""A guard against connections that would leave the machine, switched on by tests.

Kubernetes pod and Service IPs in the test cluster are fake: nothing on the
machine owns them, so a connection to one would go out of the default
interface. The cluster scripts route those ranges locally; this guard is the
second line: with ``LORAPLEX_EGRESS=local`` every HTTP client that dials a pod
(the operator's stats poller, the sidecar's forwarder, the worker's URL
source) refuses, before any socket is opened, a target outside the ranges
in ``LORAPLEX_EGRESS_ALLOW`` (comma-separated CIDRs; default loopback,
``127.0.0.0/8,::1/128``; add a test's own bridge there). ``LORAPLEX_EGRESS_LOG=FILE`` appends one line per
target and verdict, so a test can check every address that was dialled.
Unset (production), nothing is checked.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_log_lock = threading.Lock()


class EgressRefused(ConnectionError):
    """A target outside the allowed local ranges while the guard is on."""


@dataclass(frozen=True)
class EgressPolicy:
    """Which addresses a process may dial; ``enforce=False`` allows everything."""

    enforce: bool = False
    allowed: tuple[Network, ...] = LOOPBACK
    log_path: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> EgressPolicy:
        env = dict(os.environ) if env is None else env
        mode = env.get("LORAPLEX_EGRESS", "").strip().lower()
        if mode not in ("", "any", "local"):
            raise ValueError(f"LORAPLEX_EGRESS must be 'local' or 'any', not {mode!r}")
        allow = env.get("LORAPLEX_EGRESS_ALLOW", "").strip()
        allowed = parse_networks(allow.split(",")) if allow else LOOPBACK
        return cls(mode == "local", allowed, env.get("LORAPLEX_EGRESS_LOG") or None)

    def allows_address(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return any(ip in net for net in self.allowed)

    def refusal(self, host: str, addresses: Sequence[str]) -> str | None:
        """Why dialling ``host`` (resolved to ``addresses``) is refused, or None when it is allowed."""
        if not self.enforce:
            return None
        if not addresses:
            return f"{host} is not an address or an /etc/hosts name (DNS is not asked)"
        outside = [a for a in addresses if not self.allows_address(a)]
        if outside:
            return f"{host} ({', '.join(outside)}) is outside LORAPLEX_EGRESS_ALLOW (LORAPLEX_EGRESS=local)"
        return None


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(i.strip(), strict=False) for i in items if i.strip())


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _hosts_file(path: str = "/etc/hosts") -> dict[str, list[str]]:
    names: dict[str, list[str]] = {"localhost": ["127.0.0.1", "::1"]}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()  # noqa: SIM115 - read at once
    except OSError:
        return names
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and _literal(fields[0]):
            for name in fields[1:]:
                names.setdefault(name.lower(), []).append(fields[0])
    return names


def resolve(host: str) -> list[str]:
    """The addresses ``host`` stands for, without asking DNS (a DNS query would itself leave
    the machine): an IP literal is itself, a name is looked up in /etc/hosts; else none."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    return sorted(set(_hosts_file().get(host.lower().rstrip("."), [])))


def _record(policy: EgressPolicy, host: str, addresses: Sequence[str], verdict: str) -> None:
    if not policy.log_path:
        return
    line = f"{os.getpid()} {host} {','.join(addresses) or '-'} {verdict}\n"
    with _log_lock, open(policy.log_path, "a", encoding="utf-8") as f:
        f.write(line)


def check_host(host: str | None, policy: EgressPolicy | None = None) -> None:
    """Raise EgressRefused if the guard is on and ``host`` is not local; record the target."""
    policy = policy or current_policy()
    if not policy.enforce and not policy.log_path:
        return
    host = host or ""
    addresses = resolve(host)
    why = policy.refusal(host, addresses)
    _record(policy, host, addresses, "refused" if why else "allowed")
    if why:
        raise EgressRefused(why)


_policy: EgressPolicy | None = None


def current_policy() -> EgressPolicy:
    """The process's policy, read from the environment once."""
    global _policy
    if _policy is None:
        _policy = EgressPolicy.from_env()
    return _policy


def aiohttp_trace_configs(policy: EgressPolicy | None = None) -> list[Any]:
    """Trace hooks for an aiohttp ClientSession that apply the guard to every request.

    The refusal is raised as ``aiohttp.ClientConnectionError`` so callers treat it
    exactly like a target that does not answer (next candidate, "no data").
    Empty when the guard is off and nothing is logged.
    """
    policy = policy or current_policy()
    if not policy.enforce and not policy.log_path:
        return []
    import aiohttp

    async def on_request_start(session: Any, ctx: Any, params: Any) -> None:
        try:
            check_host(params.url.host, policy)
        except EgressRefused as e:
            raise aiohttp.ClientConnectionError(str(e)) from e

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    return [trace]
