"""The open catalog through a real sidecar and worker (tiny model, CPU) against a fake hub on loopback.

The worker's real huggingface_hub client reads model info and downloads files from `tests.helpers.fake_hub`; the
hub counts every request, so the tests check what a look-up costs: one model-info call per name and TTL whatever the
flood, none more once cached, and an on-demand adapter's first image costs one round trip more than a registered
hub adapter's (the model info), besides the same download.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from loraplex.api.hopauth import write_random_key_file
from tests.helpers.fake_hub import FakeHub, FakeRepo
from tests.helpers.httpclient import Reply, post
from tests.helpers.procs import PYTHON, REPO_ROOT, ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready

pytestmark = pytest.mark.slow

BASE = "loraplex/tiny-sdxl"
MAKE_ADAPTERS = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import build_tiny_pipeline
unet = build_tiny_pipeline().unet
for i, name in enumerate(sys.argv[2:]):
    write_lora(Path(sys.argv[1]) / f"{name}.safetensors", unet, rank=4, seed=200 + i)
"""


@dataclass
class Stack:
    hub: FakeHub
    sidecar: ProcHandle
    worker: ProcHandle


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("open-catalog")
    subprocess.run([PYTHON, "-c", MAKE_ADAPTERS, str(tmp), "a", "b", "c"], check=True, cwd=REPO_ROOT, timeout=300)
    a, b, c = ((tmp / f"{n}.safetensors").read_bytes() for n in "abc")
    weights = "pytorch_lora_weights.safetensors"
    with FakeHub() as hub:
        hub.add("alice/ink", FakeRepo({weights: a, "README.md": b"# ink"}, base_model=BASE, revisions={"v1": "1" * 40}))
        hub.add("carol/two", FakeRepo({"first.safetensors": a, "second.safetensors": b}, base_model=[BASE]))
        hub.add("org/registered", FakeRepo({weights: c}, base_model=BASE))
        hub.add("bob/gated", FakeRepo({weights: a}, base_model=BASE, gated="manual"))
        hub.add("bob/private", FakeRepo({weights: a}, base_model=BASE, private=True))
        hub.add("bob/sd15", FakeRepo({weights: a}, base_model="runwayml/stable-diffusion-v1-5"))
        hub.add("bob/untagged", FakeRepo({weights: a}, base_model=BASE, tags=("diffusers",)))
        hub.add("bob/huge", FakeRepo({weights: a}, base_model=BASE, size_override={weights: 10 << 20}))
        hub.add("bob/broken", FakeRepo({weights: a}, base_model=BASE, fail_status=500))
        hub.add("mallory/x", FakeRepo({weights: a}, base_model=BASE))
        policy = {
            "enabled": True,
            "endpoint": hub.url,
            "baseModels": [BASE],
            "denyOwners": ["mallory"],
            "maxFileBytes": 4 << 20,
            "negativeTtlSeconds": 600,
        }
        key = str(write_random_key_file(tmp / "hop-key"))
        wport, sport = free_port(), free_port()
        table = {
            "version": 1,
            "pools": {
                "tiny": {
                    "baseModel": "tiny",
                    "openCatalog": True,
                    "endpoints": [{"name": "pod-0", "url": f"http://127.0.0.1:{sport}"}],
                }
            },
            "adapters": {
                "registered": {
                    "pool": "tiny",
                    "source": {  # as the operator writes it: commit and file resolved at admission
                        "type": "hub",
                        "repo": "org/registered",
                        "revision": hub.repos["org/registered"].sha,
                        "filename": weights,
                    },
                    "revision": hub.repos["org/registered"].sha,
                }
            },
        }
        (tmp / "table.json").write_text(json.dumps(table))
        worker_cmd = [
            *(PYTHON, "-m", "inference_pod.worker", "--model", "tiny", "--port", str(wport)),
            *("--torch-threads", "1", "--disk-cache-dir", str(tmp / "cache"), "--hop-key-file", key),
            *("--open-catalog", json.dumps(policy)),
        ]
        # The pool's token is in the worker's environment; the policy (useToken false) must never send it.
        worker = start_process(worker_cmd, wport, ready_path=None, log_dir=tmp, env={"HF_TOKEN": hub.token})
        sidecar = None
        try:
            wait_ready(worker, timeout=240)
            sidecar_cmd = [
                *loopback_server_cmd("inference_pod.router", str(sport)),
                *("--worker-url", worker.url, "--pod-name", "pod-0", "--table-file", str(tmp / "table.json")),
                *("--hop-key-file", key, "--request-timeout", "120"),
            ]
            sidecar = start_process(sidecar_cmd, sport, timeout=60, log_dir=tmp)
            yield Stack(hub, sidecar, worker)
        finally:
            if sidecar is not None:
                sidecar.terminate()
            worker.terminate()


def gen(stack: Stack, model: str, **kw: object) -> Reply:
    body = {"model": model, "prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64, "seed": 3, **kw}
    return post(stack.sidecar.url + "/v1/generate", body, timeout=120)


def costs(hub: FakeHub, repo: str) -> dict[str, int]:
    return {kind: hub.count(kind, repo) for kind in ("info", "resolve")}


def test_an_on_demand_adapter_is_served_then_cached(stack: Stack) -> None:
    r = gen(stack, "alice/ink")
    assert r.status == 200, r.body
    assert r.header("X-Loraplex-Adapters") == "alice/ink" and r.header("X-Loraplex-Swap-Tier") == "source"
    assert costs(stack.hub, "alice/ink") == {"info": 1, "resolve": 1}
    again = gen(stack, "alice/ink")
    assert again.status == 200 and again.header("X-Loraplex-Swap-Tier") == "gpu"
    assert costs(stack.hub, "alice/ink") == {"info": 1, "resolve": 1}  # metadata and bytes cached: no hub call
    assert not any(stack.hub.authorized)  # the pool's token never left the worker


def test_first_image_costs_one_round_trip_more_than_a_registered_hub_adapter(stack: Stack) -> None:
    registered = gen(stack, "registered")
    assert registered.status == 200, registered.body
    assert costs(stack.hub, "org/registered") == {"info": 0, "resolve": 1}
    on_demand = gen(stack, "carol/two:second.safetensors")
    assert on_demand.status == 200, on_demand.body
    assert costs(stack.hub, "carol/two") == {"info": 1, "resolve": 1}


def test_a_branch_is_pinned_to_its_commit_and_extra_adapters_work(stack: Stack) -> None:
    r = gen(stack, "alice/ink@v1")
    assert r.status == 200, r.body
    r = gen(stack, "tiny", adapters=[{"name": "alice/ink", "scale": 0.5}])
    assert r.status == 200, r.body
    ambiguous = gen(stack, "carol/two")
    assert ambiguous.status == 422 and ambiguous.json()["error"]["code"] == "no_weights"


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("bob/gated", 403, "gated"),
        ("bob/private", 404, "repo_not_found"),
        ("bob/sd15", 422, "base_model_mismatch"),
        ("bob/untagged", 422, "missing_tag"),
        ("bob/huge", 413, "adapter_too_large"),
        ("bob/nothing", 404, "repo_not_found"),
        ("alice/ink@nope", 404, "revision_not_found"),
        ("bob/broken", 502, "hub_unavailable"),
        ("mallory/x", 403, "not_allowed"),
        ("alice/ink:../x.safetensors", 400, "invalid_adapter_name"),
    ],
)
def test_refused_for_each_reason(stack: Stack, model: str, status: int, code: str) -> None:
    repo = model.split("@")[0].split(":")[0]
    before = stack.hub.count("info", repo)
    r = gen(stack, model)
    assert r.status == status, r.body
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == "model"
    assert "<" not in error["message"]  # the hub's error bodies are never echoed
    if code in ("not_allowed", "invalid_adapter_name"):
        assert stack.hub.count("info", repo) == before  # refused before any hub call
    if code == "adapter_too_large":
        assert stack.hub.count("resolve", "bob/huge") == 0  # refused from the metadata, before any download


def test_a_flood_of_one_bad_id_costs_one_hub_look_up(stack: Stack) -> None:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: gen(stack, "bob/flood-target"), range(48)))
    assert {r.status for r in replies} == {404}
    assert stack.hub.count("info", "bob/flood-target") == 1
