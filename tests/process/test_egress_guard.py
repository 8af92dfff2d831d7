"""The sidecar, as a real process, never dials a peer outside LORAPLEX_EGRESS_ALLOW.

The routing table names a peer on 127.0.0.2 (a real echo server there); a
sidecar allowed only 127.0.0.1/32 must answer with an error and leave the peer
untouched, while an otherwise identical sidecar with the default (loopback)
allow list reaches it. Both peers stay on loopback, so even a broken guard
sends nothing off the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.httpclient import get, post
from tests.helpers.procs import PYTHON, REPO_ROOT, free_port, loopback_server_cmd, start_process

pytestmark = pytest.mark.process

ECHO = str(REPO_ROOT / "tests" / "helpers" / "echo_server.py")


def test_sidecar_refuses_a_peer_outside_the_allowed_ranges(tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    echo = start_process(
        [PYTHON, ECHO, "--host", "127.0.0.2", "--port", str(port), "--name", "far"],
        port,
        host="127.0.0.2",
        log_dir=tmp_path,
    )
    table = tmp_path / "table.json"
    table.write_text(
        json.dumps(
            {
                "version": 1,
                "generation": 1,
                "pools": {"tiny": {"baseModel": "tiny", "endpoints": [{"name": "far", "url": echo.url}]}},
                "adapters": {},
            }
        )
    )
    log = tmp_path / "egress.log"
    started = []
    try:

        def sidecar(env: dict[str, str]):
            p = free_port()
            h = start_process(
                [
                    *loopback_server_cmd("inference_pod.router", str(p)),
                    "--table-file",
                    str(table),
                    "--connect-timeout",
                    "1",
                    "--request-timeout",
                    "10",
                ],
                p,
                timeout=60,
                env={"LORAPLEX_EGRESS": "local", **env},
                log_dir=tmp_path,
            )
            started.append(h)
            return h

        strict = sidecar({"LORAPLEX_EGRESS_ALLOW": "127.0.0.1/32", "LORAPLEX_EGRESS_LOG": str(log)})
        r = post(strict.url + "/v1/generate", {"model": "tiny", "prompt": "a cat", "seed": 1})
        assert r.status in (502, 503), r.body
        assert get(echo.url + "/records").json() == []
        rows = [line.split() for line in log.read_text().splitlines()]
        assert rows and all(row[1] == "127.0.0.2" and row[3] == "refused" for row in rows), rows

        relaxed = sidecar({})
        r = post(relaxed.url + "/v1/generate", {"model": "tiny", "prompt": "a cat", "seed": 1})
        assert r.status == 200, r.body
        assert len(get(echo.url + "/records").json()) == 1
    finally:
        for h in [*started, echo]:
            h.terminate()
