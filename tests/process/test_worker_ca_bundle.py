"""An https adapter source signed by a private CA: trusted through `--adapter-ca-file`, refused without it.

A CA and a server certificate for 127.0.0.1 are made here with the openssl
command line; a real https server on loopback serves a LoRA file. Two real
worker processes (tiny model, CPU) fetch it: the one given the CA bundle
loads it; the one without answers a clear error that names the cause and
quotes none of the response. The fetcher itself is also driven directly
against the same server: the SSRF guard still refuses the loopback address
without allow_private, and the hostname is still checked.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inference_pod.adapters.sources import AdapterSourceError, SourcePolicy, fetch_to_disk
from loraplex.api.routing_table import AdapterEntry
from tests.helpers.httpclient import post
from tests.helpers.procs import PYTHON, ProcHandle, free_port, start_process, wait_ready
from tests.helpers.tls import make_ca, make_server_cert

pytestmark = pytest.mark.slow

MAKE_ADAPTER = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import build_tiny_pipeline
write_lora(Path(sys.argv[1]), build_tiny_pipeline().unet, rank=4, seed=7)
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class HttpsFileServer:
    """Files of one directory over https on 127.0.0.1; counts the TLS handshakes that completed."""

    def __init__(self, directory: Path, cert: Path, key: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.port}/{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Setup:
    tmp: Path
    ca_file: Path
    other_ca_file: Path
    payload: bytes
    sha256: str
    server: HttpsFileServer
    trusting: ProcHandle  # --adapter-ca-file
    plain: ProcHandle  # system CAs only


def _worker(tmp: Path, name: str, table: Path, extra: list[str]) -> ProcHandle:
    port = free_port()
    cmd = [
        PYTHON, "-m", "inference_pod.worker", "--port", str(port), "--table", str(table),
        "--disk-cache-dir", str(tmp / f"cache-{name}"), "--gpu-slots", "1", "--max-rank", "8",
        "--torch-threads", "1", "--no-warmup", "--allow-private-sources", *extra,
    ]  # fmt: skip
    return start_process(cmd, port, ready_path=None, log_dir=tmp)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test CA")
    tmp = tmp_path_factory.mktemp("ca-bundle")
    ca = make_ca(tmp / "ca", "loraplex test CA")
    other_ca = make_ca(tmp / "other-ca", "some other CA")
    cert = make_server_cert(tmp / "server", ca, "127.0.0.1")
    files = tmp / "files"
    files.mkdir()
    subprocess.run([PYTHON, "-c", MAKE_ADAPTER, str(files / "corp.safetensors")], check=True, timeout=300)
    payload = (files / "corp.safetensors").read_bytes()
    sha = hashlib.sha256(payload).hexdigest()
    server = HttpsFileServer(files, *cert)
    table = tmp / "table.json"
    entry = {
        "pool": "tiny",
        "source": {"type": "url", "url": server.url("127.0.0.1", "corp.safetensors"), "sha256": sha},
    }
    table.write_text(json.dumps({"version": 1, "pools": {"tiny": {"baseModel": "tiny"}}, "adapters": {"corp": entry}}))
    handles: list[ProcHandle] = []
    try:
        handles.append(_worker(tmp, "trusting", table, ["--adapter-ca-file", str(ca[0])]))
        handles.append(_worker(tmp, "plain", table, []))
        for h in handles:
            wait_ready(h, timeout=300)
        yield Setup(tmp, ca[0], other_ca[0], payload, sha, server, *handles)
    finally:
        for h in handles:
            h.terminate()
        server.close()


def _prefetch(worker: ProcHandle) -> tuple[int, dict]:
    r = post(worker.url + "/v1/adapters/corp/prefetch", {}, timeout=120)
    return r.status, r.json()


def test_the_worker_given_the_ca_bundle_fetches_the_adapter(setup: Setup) -> None:
    status, body = _prefetch(setup.trusting)
    assert status == 200, body
    assert body["from"] == "source" and body["tier"] == "ram", body
    r = post(
        setup.trusting.url + "/v1/generate",
        {"model": "corp", "prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64, "seed": 1},
        timeout=180,
    )
    assert r.status == 200 and r.body.startswith(b"\x89PNG"), r.body[:300]


def test_the_worker_without_it_refuses_with_a_clear_error_quoting_nothing(setup: Setup) -> None:
    status, body = _prefetch(setup.plain)
    assert status == 502, body
    message = body["error"]["message"]
    assert "corp" in message and "TLS certificate is not trusted" in message, message
    assert "spec.adapterSources.caBundle" in message, message
    # Nothing the server sent (there was no response: the handshake failed) is echoed.
    assert len(message) < 600, message
    for i in range(0, 256, 16):
        assert setup.payload[i : i + 16].decode("latin-1") not in message


def test_a_worker_refuses_to_start_with_a_file_that_is_not_a_ca_bundle(setup: Setup, tmp_path: Path) -> None:
    junk = tmp_path / "junk.crt"
    junk.write_text("SECRET-LOOKING BYTES that are not PEM\n")
    for bad, why in ((junk, "no usable PEM certificate"), (tmp_path / "missing.crt", "No such file")):
        out = subprocess.run(
            [PYTHON, "-m", "inference_pod.worker", "--port", str(free_port()), "--adapter-ca-file", str(bad)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert "--adapter-ca-file" in out.stderr and why in out.stderr, out.stderr[-2000:]
        assert "SECRET-LOOKING" not in out.stderr


def _entry(url: str, sha: str) -> AdapterEntry:
    return AdapterEntry.model_validate({"pool": "tiny", "source": {"type": "url", "url": url, "sha256": sha}})


def test_the_fetcher_keeps_its_guards_with_a_ca_bundle(setup: Setup, tmp_path: Path) -> None:
    url = setup.server.url("127.0.0.1", "corp.safetensors")
    trusting = SourcePolicy(allow_private=True, ca_file=setup.ca_file)
    got = fetch_to_disk("corp", _entry(url, setup.sha256), tmp_path / "ok", 1 << 30, policy=trusting)
    assert got.read_bytes() == setup.payload
    # The SSRF guard: a loopback address still needs allow_private, whatever CA is trusted.
    with pytest.raises(AdapterSourceError, match="private|loopback"):
        fetch_to_disk(
            "corp", _entry(url, setup.sha256), tmp_path / "ssrf", 1 << 30, policy=SourcePolicy(ca_file=setup.ca_file)
        )
    # Another CA's bundle does not make the server trusted.
    with pytest.raises(AdapterSourceError, match="not trusted by the system CAs and the pool's CA bundle"):
        other = SourcePolicy(allow_private=True, ca_file=setup.other_ca_file)
        fetch_to_disk("corp", _entry(url, setup.sha256), tmp_path / "other", 1 << 30, policy=other)
    # The hostname is still checked: the certificate names 127.0.0.1 only, not localhost.
    with pytest.raises(AdapterSourceError, match="not trusted") as e:
        by_name = setup.server.url("localhost", "corp.safetensors")
        fetch_to_disk("corp", _entry(by_name, setup.sha256), tmp_path / "name", 1 << 30, policy=trusting)
    assert "mismatch" in str(e.value) and "localhost" in str(e.value), e.value
