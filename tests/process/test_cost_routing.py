"""The cost router (the simulator's improved policy) in real sidecars in front of real tiny-model workers, on loopback.

Two pods (worker + sidecar each) and a gateway sidecar (no worker, no load polling) share one routing table whose
pool policy the tests switch. HOME is the adapter's rendezvous home. A long generation keeps one pod busy while a
second request arrives where the shipped router cannot see that queue: entering through the other pod's sidecar, or
through the gateway. Requests are tiny (64x64) but long enough (many steps) to overlap on a loaded CPU.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inference_pod.router.placement import home_endpoints
from loraplex.api.hopauth import write_random_key_file
from tests.helpers.httpclient import Reply, get, post
from tests.helpers.procs import PYTHON, REPO_ROOT, ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready

pytestmark = pytest.mark.slow

PODS = ["pod-0", "pod-1"]
NAMES = [f"lora-{i}" for i in range(20)]
X = next(n for n in NAMES if home_endpoints(n, PODS, 1)[0] == "pod-0")  # the adapter under test
Y = next(n for n in NAMES if home_endpoints(n, PODS, 1)[0] == "pod-1")  # one homed on the other pod
HOME, OTHER = "pod-0", "pod-1"
LONG_STEPS = 40  # seconds of CPU on the tiny model (2.5 s on an idle core): the "busy" request
INTERNAL = ("X-Loraplex-Load", "X-Loraplex-Busy", "X-Loraplex-If-Idle", "X-Loraplex-Route", "X-Loraplex-Hop-Auth")

MAKE_ADAPTERS = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import build_tiny_pipeline
unet = build_tiny_pipeline().unet
for i, name in enumerate(sys.argv[2:]):
    write_lora(Path(sys.argv[1]) / f"{name}.safetensors", unet, rank=4, seed=100 + i, fmt="peft")
"""


@dataclass
class Stack:
    tmp: Path
    table_path: Path
    adapter_dir: Path
    sidecars: dict[str, ProcHandle] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    generation: int = 0

    def write(self, policy: str = "cost", idle_probes: int = 3) -> None:
        self.generation += 1
        doc = {
            "version": 1,
            "generation": self.generation,
            "pools": {
                "tiny": {
                    "baseModel": "tiny",
                    "endpoints": [{"name": p, "url": f"http://127.0.0.1:{self.ports[p]}"} for p in PODS],
                    "policy": policy,
                    "idleProbes": idle_probes,
                }
            },
            "adapters": {
                n: {"pool": "tiny", "source": {"type": "path", "path": str(self.adapter_dir / f"{n}.safetensors")}}
                for n in (X, Y)
            },
        }
        tmp = self.table_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.table_path)
        deadline = time.monotonic() + 10
        for sc in self.sidecars.values():
            while get(sc.url + "/v1/stats").json()["table"]["generation"] != self.generation:
                assert time.monotonic() < deadline
                time.sleep(0.1)

    def url(self, name: str) -> str:
        return self.sidecars[name].url

    def load(self, pod: str) -> int:
        return get(self.url(pod) + "/v1/load").json()["load"]

    def wait_load(self, pod: str, at_least: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.load(pod) < at_least:
            assert time.monotonic() < deadline, f"{pod} never got busy"
            time.sleep(0.05)

    def wait_idle(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while any(self.load(p) for p in PODS):
            assert time.monotonic() < deadline
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cost")
    s = Stack(tmp, tmp / "table.json", tmp / "adapters")
    key = str(write_random_key_file(tmp / "hop-key"))
    handles: list[ProcHandle] = []
    try:
        wports = {p: free_port() for p in PODS}
        workers = {}
        for p in PODS:
            cmd = [
                *loopback_server_cmd("inference_pod.worker", wports[p]),
                "--model",
                "tiny",
                "--torch-threads",
                "1",
                "--disk-cache-dir",
                str(tmp / f"cache-{p}"),
                "--hop-key-file",
                key,
                "--adapter-path-root",
                str(s.adapter_dir),
            ]
            workers[p] = start_process(cmd, wports[p], ready_path=None, log_dir=tmp)
            handles.append(workers[p])
        subprocess.run([PYTHON, "-c", MAKE_ADAPTERS, str(s.adapter_dir), X, Y], check=True, cwd=REPO_ROOT, timeout=300)
        s.ports = {p: free_port() for p in PODS}
        s.ports["gateway"] = free_port()
        s.write()
        common = ["--table-file", str(s.table_path), "--request-timeout", "120", "--hop-key-file", key]
        for p in PODS:
            wait_ready(workers[p], timeout=240)
            cmd = [
                *loopback_server_cmd("inference_pod.router", s.ports[p]),
                "--worker-url",
                workers[p].url,
                "--pod-name",
                p,
                "--load-poll-interval",
                "0.25",
                *common,
            ]
            s.sidecars[p] = start_process(cmd, s.ports[p], timeout=60, log_dir=tmp)
            handles.append(s.sidecars[p])
        # A gateway that never polls: it knows the pods' queues only by asking (the idle probes).
        cmd = [*loopback_server_cmd("inference_pod.router", s.ports["gateway"]), "--load-poll-interval", "0", *common]
        s.sidecars["gateway"] = start_process(cmd, s.ports["gateway"], timeout=60, log_dir=tmp)
        handles.append(s.sidecars["gateway"])
        yield s
    finally:
        for h in reversed(handles):
            h.terminate()


def gen(url: str, model: str, steps: int = 1, headers: dict[str, str] | None = None) -> Reply:
    body = {"model": model, "prompt": "a lighthouse", "steps": steps, "width": 64, "height": 64, "seed": 3}
    return post(url + "/v1/generate", body, headers=headers, timeout=180)


def served(r: Reply) -> str:
    assert r.status == 200, r.body[:300]
    assert not [h for h in INTERNAL if r.header(h) is not None], r.headers  # internal headers stay inside
    return r.header("X-Loraplex-Pod") or "?"


def while_busy(
    stack: Stack, busy: list[tuple[str, str]], then: str, headers: dict[str, str] | None = None
) -> tuple[Reply, list[Reply]]:
    """Keep the pods busy with long requests (entry sidecar, adapter), then send `model` through `then`."""
    stack.wait_idle()
    with concurrent.futures.ThreadPoolExecutor(len(busy) + 1) as ex:
        longs = []
        for entry, adapter in busy:
            before = {p: stack.load(p) for p in PODS}
            longs.append(ex.submit(gen, stack.url(entry), adapter, LONG_STEPS))
            deadline = time.monotonic() + 30
            while {p: stack.load(p) for p in PODS} == before:  # it reached a worker
                assert time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(1.0)  # the pod sidecars' load polls (every 0.25 s) have seen it
        r = gen(stack.url(then), X, LONG_STEPS // 4, headers)
        return r, [f.result() for f in longs]


def test_idle_pool_serves_from_the_resident_home_from_every_entry(stack: Stack) -> None:
    stack.write("cost")
    for entry in ("pod-1", "pod-0", "gateway", "pod-1"):
        r = gen(stack.url(entry), X)
        assert served(r) == HOME
    assert r.header("X-Loraplex-Swap-Tier") == "gpu"  # resident: no fetch
    assert r.header("X-Loraplex-Attempts") == "1"  # an idle home takes its probe at once


def test_busy_home_seen_through_the_shared_view(stack: Stack) -> None:
    """The shipped router's blind spot: the home's queue was filled through another sidecar."""
    stack.write("cost", idle_probes=0)  # the view alone: no probes
    for _ in range(2):  # OTHER's sidecar learns the service time (the wait behind a busy pod)
        assert served(gen(stack.url(OTHER), X, LONG_STEPS // 2)) == HOME
    r, (first,) = while_busy(stack, [(HOME, X)], then=OTHER)
    assert served(first) == HOME
    assert served(r) == OTHER, "the cost router should send it to the idle pod"
    assert float(r.header("X-Loraplex-Queue-Ms")) < 1000
    # Before: the rendezvous router on the same arrivals queues it behind the busy home.
    stack.write("rendezvous")
    r, (first,) = while_busy(stack, [(HOME, X)], then=OTHER)
    assert served(first) == HOME and served(r) == HOME
    assert float(r.header("X-Loraplex-Queue-Ms")) > 100  # it waited behind the long one


def test_idle_probe_finds_the_idle_pod_without_a_view(stack: Stack) -> None:
    stack.write("cost")
    r, (first,) = while_busy(stack, [(HOME, X)], then="gateway")
    assert served(first) == HOME
    assert served(r) == OTHER and r.header("X-Loraplex-Attempts") == "2"  # HOME refused the probe, OTHER took it
    metrics = get(stack.url("gateway") + "/metrics").body.decode()
    assert 'loraplex_router_upstream_attempts_total{outcome="busy",pool="tiny"} 1.0' in metrics
    # Without probes the gateway, which never saw HOME's queue, sends it there.
    stack.write("cost", idle_probes=0)
    r, _ = while_busy(stack, [(HOME, X)], then="gateway")
    assert served(r) == HOME and r.header("X-Loraplex-Attempts") == "1"


def test_every_pod_busy_falls_back_to_the_plain_choice(stack: Stack) -> None:
    stack.write("cost")
    r, firsts = while_busy(stack, [(HOME, X), (OTHER, Y)], then="gateway")
    assert [served(f) for f in firsts] == [HOME, OTHER]
    assert served(r) == HOME and r.header("X-Loraplex-Attempts") == "3"  # two refused probes, then the home


def test_a_clients_if_idle_header_is_not_honoured(stack: Stack) -> None:
    stack.write("rendezvous")  # the gateway sends no probe of its own, and cannot see HOME's queue
    r, _ = while_busy(stack, [(HOME, X)], then="gateway", headers={"X-Loraplex-If-Idle": "1"})
    assert served(r) == HOME  # queued behind the long request, not refused
    assert float(r.header("X-Loraplex-Queue-Ms")) > 100  # it waited behind the long one
