"""The tests' and the demo's port picker never hands out one port twice (two servers would collide on it)."""

from __future__ import annotations

import socket

import pytest

from inference_pod.local import stack
from tests.helpers import procs


class _SamePortTwice:
    """A socket whose OS hands out `ports` in turn, as Linux may after a close."""

    ports: list[int] = []

    def __init__(self, *args: object) -> None:
        self.port = _SamePortTwice.ports.pop(0)

    def __enter__(self) -> _SamePortTwice:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, addr: tuple[str, int]) -> None:
        return None

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.mark.parametrize("module", [procs, stack], ids=["tests.helpers.procs", "inference_pod.local.stack"])
def test_a_port_the_os_repeats_is_skipped(module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "_HANDED_OUT", set())
    _SamePortTwice.ports = [40001, 40001, 40001, 40002]
    monkeypatch.setattr(module.socket, "socket", _SamePortTwice)
    assert module.free_port() == 40001
    assert module.free_port() == 40002  # before: 40001 again, and the second server's bind failed


def test_many_ports_are_distinct_and_bindable() -> None:
    ports = [procs.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
