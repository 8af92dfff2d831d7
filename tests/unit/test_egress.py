"""The egress guard: which targets a process under test may dial, and that aiohttp honours it."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from loraplex.egress import EgressPolicy, EgressRefused, aiohttp_trace_configs, check_host, parse_networks


def test_off_unless_asked() -> None:
    assert not EgressPolicy.from_env({}).enforce
    assert not EgressPolicy.from_env({"LORAPLEX_EGRESS": "any"}).enforce
    assert EgressPolicy.from_env({"LORAPLEX_EGRESS": "local"}).enforce
    with pytest.raises(ValueError, match="LORAPLEX_EGRESS"):
        EgressPolicy.from_env({"LORAPLEX_EGRESS": "sometimes"})


@pytest.mark.parametrize(
    ("host", "addresses", "allowed"),
    [
        ("127.0.0.1", ["127.0.0.1"], True),
        ("127.42.0.9", ["127.42.0.9"], True),
        ("::1", ["::1"], True),
        ("10.244.0.5", ["10.244.0.5"], False),  # a kwok pod IP: nothing here owns it
        ("10.96.0.1", ["10.96.0.1"], False),  # a Service IP
        ("169.254.169.254", ["169.254.169.254"], False),
        ("mixed.test", ["127.0.0.1", "192.0.2.7"], False),  # any non-local answer refuses the name
        ("nowhere.invalid", [], False),
    ],
)
def test_refusal_by_address(host: str, addresses: list[str], allowed: bool) -> None:
    policy = EgressPolicy.from_env({"LORAPLEX_EGRESS": "local"})
    assert (policy.refusal(host, addresses) is None) is allowed


def test_allow_list_replaces_loopback_and_adds_bridges() -> None:
    policy = EgressPolicy.from_env({"LORAPLEX_EGRESS": "local", "LORAPLEX_EGRESS_ALLOW": "127.0.0.1/32, 10.88.0.0/16"})
    assert policy.allowed == parse_networks(["127.0.0.1/32", "10.88.0.0/16"])
    assert policy.refusal("10.88.3.4", ["10.88.3.4"]) is None
    assert policy.refusal("127.0.0.2", ["127.0.0.2"]) is not None


def test_check_host_records_every_target(tmp_path) -> None:
    log = tmp_path / "egress.log"
    policy = EgressPolicy(enforce=True, log_path=str(log))
    check_host("127.0.0.1", policy)
    check_host("localhost", policy)
    with pytest.raises(EgressRefused, match="10.244.1.2"):
        check_host("10.244.1.2", policy)
    rows = [line.split() for line in log.read_text().splitlines()]
    assert [(r[1], r[3]) for r in rows] == [
        ("127.0.0.1", "allowed"),
        ("localhost", "allowed"),
        ("10.244.1.2", "refused"),
    ]


def test_names_resolve_from_the_hosts_file_only() -> None:
    from loraplex.egress import resolve

    assert "127.0.0.1" in resolve("localhost")
    assert resolve("loras.example.com") == []  # no DNS query: it would itself leave the machine


def test_guard_off_checks_nothing(tmp_path) -> None:
    check_host("10.244.1.2", EgressPolicy())  # production: no check, no resolution, no log


async def test_aiohttp_session_refuses_before_connecting() -> None:
    """A server on 127.0.0.2 that the policy does not allow: the request fails and it sees nothing.

    The refused target is on loopback on purpose: if the guard failed, the
    connection would still stay on this machine (and the test would fail).
    """
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/stats", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.2", port)
    await site.start()
    try:
        strict = EgressPolicy(enforce=True, allowed=parse_networks(["127.0.0.1/32"]))
        async with aiohttp.ClientSession(trace_configs=aiohttp_trace_configs(strict)) as session:
            with pytest.raises(aiohttp.ClientConnectionError, match="outside LORAPLEX_EGRESS_ALLOW"):
                await session.get(f"http://127.0.0.2:{port}/v1/stats")
        assert hits == []
        # The same request with a policy that allows it goes through: the guard is the difference.
        loopback = aiohttp_trace_configs(EgressPolicy(enforce=True))
        async with (
            aiohttp.ClientSession(trace_configs=loopback) as session,
            session.get(f"http://127.0.0.2:{port}/v1/stats") as r,
        ):
            assert r.status == 200
        assert hits == ["/v1/stats"]
    finally:
        await runner.cleanup()
        await asyncio.sleep(0)
