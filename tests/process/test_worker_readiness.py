"""Readiness while the GPU job is stuck, on a real worker and its sidecar (tiny model, CPU).

The worker runs one GPU job at a time and cannot interrupt it. A job running longer than the request deadline
(`--deadline-s`; no request may take that long) means the GPU thread is stuck: the worker's /readyz says so (503,
"stuck"), the sidecar's /readyz follows (so the pod leaves the Service and the routing table), and /healthz stays
200 (a slow job may still finish; a restart would reload the model). Once the job ends, ready again. The "stuck"
job is a real one made long on purpose: one 320x320 step of the tiny model takes seconds on a CPU (its VAE).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from loraplex.api.hopauth import write_random_key_file
from tests.helpers.httpclient import Reply, get, post
from tests.helpers.procs import PYTHON, ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready

pytestmark = pytest.mark.slow

DEADLINE_S = 1.0


@dataclass
class Pod:
    worker: ProcHandle
    sidecar: ProcHandle


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    tmp = tmp_path_factory.mktemp("readiness")
    key = str(write_random_key_file(tmp / "hop-key"))
    (tmp / "table.json").write_text('{"version": 1, "pools": {"tiny": {"baseModel": "tiny"}}, "adapters": {}}')
    wport, sport = free_port(), free_port()
    worker_cmd = [
        *(PYTHON, "-m", "inference_pod.worker", "--model", "tiny", "--host", "127.0.0.1", "--port", str(wport)),
        *("--torch-threads", "1", "--deadline-s", str(DEADLINE_S), "--hop-key-file", key),
        *("--disk-cache-dir", str(tmp / "cache"), "--table", str(tmp / "table.json")),
    ]
    worker = start_process(worker_cmd, wport, ready_path=None, log_dir=tmp)
    sidecar: ProcHandle | None = None
    try:
        wait_ready(worker, timeout=300)
        sidecar_cmd = [
            *loopback_server_cmd("inference_pod.router", str(sport)),
            *("--worker-url", worker.url, "--pod-name", "pod-0", "--table-file", str(tmp / "table.json")),
            *("--hop-key-file", key),
        ]
        sidecar = start_process(sidecar_cmd, sport, timeout=60, log_dir=tmp)
        yield Pod(worker, sidecar)
    finally:
        if sidecar is not None:
            sidecar.terminate()
        worker.terminate()


def long_generation(pod: Pod) -> Reply:
    body = {"model": "tiny", "prompt": "a lighthouse", "steps": 1, "width": 320, "height": 320, "seed": 1}
    return post(pod.worker.url + "/v1/generate", body, timeout=60)


def test_a_job_running_past_the_deadline_makes_the_pod_unready_not_dead(pod: Pod) -> None:
    assert get(pod.worker.url + "/readyz").status == 200
    assert get(pod.sidecar.url + "/readyz").status == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        job = pool.submit(long_generation, pod)
        stuck = None
        while time.monotonic() - t0 < DEADLINE_S + 15:
            r = get(pod.worker.url + "/readyz")
            if r.status == 503:
                stuck = r
                break
            time.sleep(0.2)
        assert stuck is not None, "the worker stayed ready with its GPU job past the deadline"
        took = time.monotonic() - t0
        assert took >= DEADLINE_S - 0.5, took  # not before the job has run for the deadline
        assert stuck.json()["status"] == "stuck" and stuck.json()["jobSeconds"] >= DEADLINE_S
        assert get(pod.worker.url + "/healthz").status == 200  # alive: liveness must not restart it
        side = None
        for _ in range(20):  # the sidecar re-asks its worker at most once a second
            side = get(pod.sidecar.url + "/readyz")
            if side.status == 503:
                break
            time.sleep(0.2)
        assert side is not None and side.status == 503, side
        assert side.json()["worker"] is False
        r = job.result(timeout=60)
        assert r.status == 504, r.body[:300]  # its caller was answered at the deadline
    # The job ends on its own: ready again.
    deadline = time.monotonic() + 180
    while get(pod.worker.url + "/readyz").status != 200:
        assert time.monotonic() < deadline, "still not ready long after the job must have ended"
        time.sleep(0.5)
    r = post(pod.worker.url + "/v1/generate", {"model": "tiny", "prompt": "x", "steps": 1, "width": 64, "height": 64})
    assert r.status == 200, r.body[:300]
