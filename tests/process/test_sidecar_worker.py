"""Router sidecars in front of real diffusion workers (tiny model, CPU), all on loopback.

Two pods, each a `inference_pod.worker.server` + `inference_pod.router.sidecar` process pair,
share one routing table file naming real LoRA files on disk. Generations are
kept tiny (64x64, 1-2 steps) because CPU time is scarce.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inference_pod.router.placement import home_endpoints
from loraplex.api.hopauth import HopKeys, write_random_key_file
from tests.helpers.httpclient import Reply, get, post
from tests.helpers.procs import PYTHON, REPO_ROOT, ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready
from tests.helpers.relay import RecordingRelay

pytestmark = pytest.mark.slow

PODS = ["pod-0", "pod-1"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

MAKE_ADAPTERS = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import build_tiny_pipeline
unet = build_tiny_pipeline().unet
out = Path(sys.argv[1])
for i, name in enumerate(sys.argv[2:]):
    write_lora(out / f"{name}.safetensors", unet, rank=4, seed=100 + i, fmt="kohya" if i % 2 else "peft")
"""


def home(adapter: str) -> str:
    return home_endpoints(adapter, PODS, 1)[0]


# One adapter homed on each pod, plus one added later by a table reload.
NAMES = [f"lora-{i}" for i in range(20)]
HOMED = {p: next(n for n in NAMES if home(n) == p) for p in PODS}
LATE = next(n for n in NAMES if n not in HOMED.values())


@dataclass
class Pods:
    tmp: Path
    table_path: Path
    adapter_dir: Path
    workers: dict[str, ProcHandle] = field(default_factory=dict)
    sidecars: dict[str, ProcHandle] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    generation: int = 0

    def doc(self, adapters: list[str]) -> dict:
        return {
            "version": 1,
            "generation": self.generation,
            "pools": {
                "tiny": {
                    "baseModel": "tiny",
                    "endpoints": [{"name": p, "url": f"http://127.0.0.1:{self.ports[p]}"} for p in PODS],
                },
                "empty": {"baseModel": "empty-base"},
            },
            "adapters": {
                n: {
                    "pool": "tiny",
                    "source": {"type": "path", "path": str(self.adapter_dir / f"{n}.safetensors")},
                    "aliases": [f"{n}-alias"],
                }
                for n in adapters
            },
        }

    def write(self, adapters: list[str]) -> None:
        self.generation += 1
        self.write_raw(json.dumps(self.doc(adapters)))
        deadline = time.monotonic() + 10
        for p in PODS:
            while get(self.sidecars[p].url + "/v1/stats").json()["table"]["generation"] != self.generation:
                assert time.monotonic() < deadline
                time.sleep(0.1)

    def write_raw(self, content: str) -> None:
        tmp = self.table_path.with_suffix(".tmp")
        tmp.write_text(content)
        tmp.replace(self.table_path)

    def url(self, pod: str) -> str:
        return self.sidecars[pod].url


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    tmp = tmp_path_factory.mktemp("pods")
    s = Pods(tmp, tmp / "table.json", tmp / "adapters")
    key = str(write_random_key_file(tmp / "hop-key"))
    handles: list[ProcHandle] = []
    try:
        wports = {p: free_port() for p in PODS}
        for p in PODS:  # both workers load at once while the adapters are written
            cmd = [
                PYTHON,
                "-m",
                "inference_pod.worker",
                "--model",
                "tiny",
                "--host",
                "127.0.0.1",
                "--port",
                str(wports[p]),
                "--torch-threads",
                "1",
                "--disk-cache-dir",
                str(tmp / f"cache-{p}"),
                "--hop-key-file",
                key,
                "--adapter-path-root",
                str(s.adapter_dir),
            ]
            s.workers[p] = start_process(cmd, wports[p], ready_path=None, log_dir=tmp)
            handles.append(s.workers[p])
        subprocess.run(
            [PYTHON, "-c", MAKE_ADAPTERS, str(s.adapter_dir), *HOMED.values(), LATE],
            check=True,
            cwd=REPO_ROOT,
            timeout=300,
        )
        s.ports = {p: free_port() for p in PODS}
        s.write_raw(json.dumps(s.doc(list(HOMED.values()))))
        for p in PODS:
            wait_ready(s.workers[p], timeout=240)
            cmd = [
                *loopback_server_cmd("inference_pod.router", str(s.ports[p])),
                "--worker-url",
                s.workers[p].url,
                "--pod-name",
                p,
                "--table-file",
                str(s.table_path),
                "--connect-timeout",
                "1",
                "--request-timeout",
                "120",
                "--hop-key-file",
                key,
            ]
            s.sidecars[p] = start_process(cmd, s.ports[p], timeout=60, log_dir=tmp)
            handles.append(s.sidecars[p])
        yield s
    finally:
        for h in handles:
            h.terminate()


def gen(url: str, model: str, path: str = "/v1/generate", **kw) -> Reply:
    body = {"model": model, "prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64, "seed": 3, **kw}
    return post(url + path, body, timeout=120)


def test_generation_lands_on_the_adapters_home_from_either_sidecar(pods: Pods) -> None:
    for pod, adapter in HOMED.items():
        images = set()
        for entry in (*PODS, *PODS):
            r = gen(pods.url(entry), adapter)
            assert r.status == 200, r.body
            assert r.header("X-Loraplex-Pod") == pod
            assert r.header("Content-Type") == "image/png" and r.body.startswith(PNG_MAGIC)
            assert r.header("X-Loraplex-Swap-Tier") and float(r.header("X-Loraplex-Inference-Ms")) > 0
            assert float(r.header("X-Loraplex-Router-Ms")) >= 0
            images.add(r.body)
        assert len(images) == 1  # same adapter, seed and size: same bytes, wherever it entered
    # After the first request the adapter stays resident on its home: no source fetch again.
    r = gen(pods.url(PODS[0]), HOMED[PODS[1]])
    assert r.header("X-Loraplex-Swap-Tier") == "gpu", r.headers
    # Each pod's /v1/stats says what its worker holds (the operator writes it into the adapters' status).
    time.sleep(1.1)  # the sidecar caches its worker's answer for a second
    for pod, adapter in HOMED.items():
        resident = get(pods.url(pod) + "/v1/stats").json()["resident"]
        assert adapter in resident["gpu"] and resident["counts"]["gpu"] >= 1, (pod, resident)
        others = [a for p, a in HOMED.items() if p != pod]
        assert not set(others) & {*resident["gpu"], *resident["ram"], *resident["disk"]}, (pod, resident)
    bad = get(pods.workers[PODS[0]].url + "/v1/resident?limit=x")
    assert bad.status == 400 and bad.json()["error"]["param"] == "limit"


def test_alias_openai_route_and_adapter_changes_the_image(pods: Pods) -> None:
    adapter = HOMED["pod-1"]
    r = post(
        pods.url("pod-0") + "/v1/images/generations",
        {"model": f"{adapter}-alias", "prompt": "a lighthouse", "size": "64x64", "steps": 1, "seed": 3},
        timeout=120,
    )
    assert r.status == 200, r.body
    assert r.header("X-Loraplex-Pod") == "pod-1"
    png = base64.b64decode(r.json()["data"][0]["b64_json"])
    assert png.startswith(PNG_MAGIC)
    base = gen(pods.url("pod-0"), "tiny")
    assert base.status == 200 and base.body != gen(pods.url("pod-0"), adapter).body


def test_router_errors_in_front_of_real_workers(pods: Pods) -> None:
    r = gen(pods.url("pod-0"), "no-such-model")
    assert r.status == 404 and "no-such-model" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "model"
    r = gen(pods.url("pod-0"), "empty-base")
    assert r.status == 503 and r.json()["error"]["code"] == "no_ready_endpoint"
    # The worker's own validation comes back through the router unchanged (not retried).
    r = gen(pods.url("pod-0"), HOMED["pod-1"], steps=0)
    assert r.status == 400 and r.json()["error"]["param"] == "steps"
    assert r.header("X-Loraplex-Pod") == "pod-1" and r.header("X-Loraplex-Attempts") == "1"


def test_hop_request_is_served_by_the_local_worker(pods: Pods) -> None:
    adapter = HOMED["pod-1"]
    body = {"model": adapter, "prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1}
    sig = HopKeys(pods.tmp / "hop-key").sign("POST", "/v1/generate", "elsewhere", "", json.dumps(body).encode())
    r = post(
        pods.url("pod-0") + "/v1/generate",
        body,
        headers={"X-Loraplex-Hop": "elsewhere", "X-Loraplex-Hop-Auth": sig},
        timeout=120,
    )
    assert r.status == 200 and r.header("X-Loraplex-Pod") == "pod-0"
    # The same signed hop again: refused (before: accepted for 60 s).
    r = post(
        pods.url("pod-0") + "/v1/generate",
        body,
        headers={"X-Loraplex-Hop": "elsewhere", "X-Loraplex-Hop-Auth": sig},
        timeout=120,
    )
    assert r.status == 401 and "replayed" in r.json()["error"]["message"], r.body
    # Unsigned: refused at the edge (before: served, with any route the client sent on to the worker).
    r = post(pods.url("pod-0") + "/v1/generate", body, headers={"X-Loraplex-Hop": "elsewhere"}, timeout=120)
    assert r.status == 401


def test_a_captured_sidecar_to_worker_hop_is_refused_when_replayed(pods: Pods) -> None:
    """Before: a hop signature was good for its whole 60 s window, so a request captured between a sidecar and its
    worker (its route names adapter sources) could be sent again, as often as wanted."""
    worker = pods.workers["pod-0"]
    with RecordingRelay(("127.0.0.1", worker.port)) as tap:
        port = free_port()  # a second sidecar for pod-0 whose worker connection goes through the tap
        cmd = [
            *loopback_server_cmd("inference_pod.router", str(port)),
            *("--worker-url", tap.url, "--pod-name", "pod-0", "--table-file", str(pods.table_path)),
            *("--request-timeout", "120", "--hop-key-file", str(pods.tmp / "hop-key")),
        ]
        sidecar = start_process(cmd, port, timeout=60, log_dir=pods.tmp)
        try:
            r = gen(sidecar.url, HOMED["pod-0"])
            assert r.status == 200 and r.header("X-Loraplex-Pod") == "pod-0", r.body[:300]
        finally:
            sidecar.terminate()
        [(method, path, headers, body)] = [q for q in tap.requests() if q[1] == "/v1/generate"]
    h = {k.lower(): v for k, v in headers.items()}
    internal = ("content-type", "x-loraplex-hop", "x-loraplex-route", "x-loraplex-hop-auth")
    replay = {k: v for k, v in h.items() if k in internal}
    assert set(replay) == set(internal), h
    r = post(worker.url + path, body, headers=replay, timeout=120)
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_hop_signature", r.body[:300]
    assert "replayed" in r.json()["error"]["message"]
    # The very same request freshly signed is served: identical requests differ by their nonces.
    fresh = HopKeys(pods.tmp / "hop-key").sign(method, path, h["x-loraplex-hop"], h["x-loraplex-route"], body)
    r = post(worker.url + path, body, headers={**replay, "x-loraplex-hop-auth": fresh}, timeout=120)
    assert r.status == 200, r.body[:300]


def test_table_hot_reload_with_real_workers(pods: Pods) -> None:
    assert gen(pods.url("pod-0"), LATE).status == 404
    pods.write([*HOMED.values(), LATE])
    r = gen(pods.url("pod-1"), LATE)
    assert r.status == 200 and r.header("X-Loraplex-Pod") == home(LATE)
    pods.write_raw('{"version": 1, "adapters": ')
    time.sleep(1.5)  # three polls
    r = gen(pods.url("pod-0"), LATE)
    assert r.status == 200 and r.header("X-Loraplex-Pod") == home(LATE)
    assert get(pods.url("pod-0") + "/v1/stats").json()["table"]["reloadErrors"] >= 1


def test_killed_worker_makes_the_router_retry_elsewhere(pods: Pods) -> None:
    # Destructive: last in the module.
    victim, survivor = "pod-1", "pod-0"
    adapter = HOMED[victim]
    pods.workers[victim].kill()
    for entry in PODS:
        r = gen(pods.url(entry), adapter)
        assert r.status == 200, r.body
        assert r.header("X-Loraplex-Pod") == survivor and r.header("X-Loraplex-Attempts") == "2"
    assert get(pods.url(victim) + "/readyz").status == 503
    stats = get(pods.url(survivor) + "/v1/stats").json()
    assert stats["pools"]["tiny"]["errors"] == 0
