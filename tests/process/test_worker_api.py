"""The diffusion worker as a real process on loopback (tiny model, CPU): API, determinism, bad inputs.

One worker serves the whole module; every bad request is followed by a good
one somewhere, and the last test checks the worker still serves after all of
them. Generations are tiny (64x64, 2 steps) because CPU time is scarce.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import subprocess
from pathlib import Path

import pytest

from loraplex.api.hopauth import HopKeys, write_random_key_file
from tests.helpers.httpclient import get, post
from tests.helpers.procs import PYTHON, free_port, start_process

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"

MAKE_ADAPTERS = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_lora
from inference_pod.worker.tiny_model import TinyConfig, build_tiny_pipeline
out = Path(sys.argv[1])
unet = build_tiny_pipeline().unet
write_lora(out / "peft.safetensors", unet, rank=4, seed=1, strength=3.0)
write_lora(out / "kohya.safetensors", unet, rank=8, seed=2, fmt="kohya", alpha=4.0, strength=3.0)
write_lora(out / "style.safetensors", unet, rank=4, seed=3, strength=3.0)
write_lora(out / "rank32.safetensors", unet, rank=32, seed=4)
write_lora(out / "foreign.safetensors", build_tiny_pipeline(TinyConfig(text_hidden=48)).unet, rank=4, seed=5)
"""


def table(adapters_dir: Path, dead_port: int) -> dict:
    def path(name):
        return {"pool": "tiny", "source": {"type": "path", "path": str(adapters_dir / name)}}

    (adapters_dir / "corrupt.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"{" * 40)
    (adapters_dir / "weights.ckpt").write_bytes(b"\x80\x04\x95pickle")
    return {
        "version": 1,
        "pools": {"tiny": {"baseModel": "tiny"}},
        "adapters": {
            "peft": {**path("peft.safetensors"), "aliases": ["peft-alias"]},
            "kohya": path("kohya.safetensors"),
            "style": {**path("style.safetensors"), "scale": 0.5},
            "rank32": path("rank32.safetensors"),
            "foreign": path("foreign.safetensors"),
            "corrupt": path("corrupt.safetensors"),
            "pickle": path("weights.ckpt"),
            "unreachable": {
                "pool": "tiny",
                "source": {"type": "url", "url": f"http://127.0.0.1:{dead_port}/x.safetensors"},
            },
        },
    }


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    adapters = tmp / "adapters"
    adapters.mkdir()
    subprocess.run([PYTHON, "-c", MAKE_ADAPTERS, str(adapters)], check=True)
    (tmp / "table.json").write_text(json.dumps(table(adapters, free_port())))
    write_random_key_file(tmp / "hop-key")
    port = free_port()
    cmd = [
        PYTHON,
        "-m",
        "inference_pod.worker",
        "--port",
        str(port),
        "--table",
        str(tmp / "table.json"),
        "--disk-cache-dir",
        str(tmp / "cache"),
        "--gpu-slots",
        "2",
        "--max-rank",
        "16",
        "--default-steps",
        "2",
        "--max-steps",
        "40",
        "--max-width",
        "128",
        "--max-height",
        "128",
        "--queue-size",
        "1",
        "--max-body-bytes",
        "4096",
        "--hop-key-file",
        str(tmp / "hop-key"),
        "--allow-private-sources",  # the "unreachable" URL source is on loopback
    ]
    handle = start_process(cmd, port, timeout=300)
    handle.tmp = tmp  # type: ignore[attr-defined]
    yield handle
    handle.terminate()


def gen(worker, **body):
    body = {"prompt": "a red fox", "seed": 1, "steps": 2, **body}
    return post(worker.url + "/v1/generate", body, timeout=120)


def test_generates_png_with_timing_headers(worker):
    r = gen(worker, model="peft")
    assert r.status == 200, r.body
    assert r.body.startswith(PNG)
    assert r.header("X-Loraplex-Swap-Tier") in {"disk", "ram", "gpu"}
    for h in ("X-Loraplex-Queue-Ms", "X-Loraplex-Swap-Ms", "X-Loraplex-Inference-Ms"):
        assert float(r.header(h)) >= 0
    assert float(r.header("X-Loraplex-Fetch-Ms")) > 0  # first use: read from its path before the job
    assert r.header("X-Loraplex-Seed") == "1"


def test_same_seed_same_bytes_and_adapters_change_the_image(worker):
    a1 = gen(worker, model="peft", seed=42).body
    b = gen(worker, model="kohya", seed=42).body
    a2 = gen(worker, model="peft-alias", seed=42).body
    base = gen(worker, model="tiny", seed=42).body
    assert a1 == a2
    assert len({a1, b, base}) == 3
    assert gen(worker, model="tiny", seed=43).body != base


def test_second_use_is_a_slot_hit(worker):
    gen(worker, model="kohya")
    r = gen(worker, model="kohya")
    assert r.header("X-Loraplex-Swap-Tier") == "gpu"
    assert float(r.header("X-Loraplex-Fetch-Ms")) == 0


def test_several_adapters_with_scales(worker):
    one = gen(worker, model="tiny", adapters=[{"name": "peft", "scale": 1.0}], seed=5)
    two = gen(worker, model="tiny", adapters=[{"name": "peft", "scale": 1.0}, {"name": "style", "scale": 0.7}], seed=5)
    assert one.status == two.status == 200
    assert one.body != two.body
    assert one.body == gen(worker, model="peft", seed=5).body


def test_openai_images_api(worker):
    r = post(
        worker.url + "/v1/images/generations",
        {"model": "peft", "prompt": "x", "n": 2, "size": "64x64", "steps": 1, "seed": 3},
    )
    assert r.status == 200, r.body
    data = r.json()["data"]
    assert len(data) == 2 and all(base64.b64decode(d["b64_json"]).startswith(PNG) for d in data)


def test_openai_client_works_with_base_url(worker):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused")
    out = client.images.generate(
        model="kohya",
        prompt="a lighthouse",
        size="64x64",
        response_format="b64_json",
        extra_body={"seed": 9, "steps": 1},
    )
    assert base64.b64decode(out.data[0].b64_json).startswith(PNG)


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"prompt": "x"}, 400, "model"),
        ({"model": "peft"}, 400, "prompt"),
        ({"model": "peft", "prompt": "x", "steps": 41}, 400, "steps"),
        ({"model": "peft", "prompt": "x", "width": 100}, 400, "width"),
        ({"model": "peft", "prompt": "x", "height": 256}, 400, "height"),
        ({"model": "peft", "prompt": "x", "colour": "red"}, 400, "colour"),
        ({"model": "nope", "prompt": "x"}, 404, "model"),
        ({"model": "tiny", "prompt": "x", "adapters": [{"name": "nope"}]}, 404, "adapters[0].name"),
    ],
)
def test_bad_requests_name_the_field(worker, body, status, param):
    r = post(worker.url + "/v1/generate", body)
    assert r.status == status, r.body
    err = r.json()["error"]
    assert err["param"] == param
    assert param.split("[")[0] in err["message"]


def test_malformed_json_and_oversized_body(worker):
    r = post(worker.url + "/v1/generate", b"{not json", headers={"Content-Type": "application/json"})
    assert r.status == 400 and "JSON" in r.json()["error"]["message"]
    r = post(worker.url + "/v1/generate", {"model": "peft", "prompt": "x" * 5000})
    assert r.status == 413


@pytest.mark.parametrize(
    "model,status,words",
    [
        ("corrupt", 422, "corrupt"),
        ("pickle", 422, "pickle"),
        ("foreign", 422, "another base model"),
        ("rank32", 422, "max rank 16"),
        ("unreachable", 502, "cannot reach"),
    ],
)
def test_bad_adapters_get_clear_errors(worker, model, status, words):
    r = gen(worker, model=model)
    assert r.status == status, r.body
    assert words in r.json()["error"]["message"]
    assert gen(worker, model="peft").status == 200  # and the worker serves on


def test_bad_adapters_listed_as_bad(worker):
    gen(worker, model="pickle")
    listing = {a["name"]: a for a in get(worker.url + "/v1/adapters").json()["adapters"]}
    assert listing["pickle"]["bad"] and "pickle" in listing["pickle"]["bad"]
    assert listing["peft"]["bad"] is None


def test_prefetch_brings_an_adapter_into_ram(worker):
    r = post(worker.url + "/v1/adapters/style/prefetch", None)
    assert r.status == 200, r.body
    assert r.json()["tier"] in {"ram", "gpu"}
    assert post(worker.url + "/v1/adapters/nope/prefetch", None).status == 404


def test_full_queue_answers_429_with_retry_after(worker):
    # queue-size 1: one running + one waiting; the rest must be refused, none dropped silently.
    def slow(i):
        return gen(worker, model="tiny", steps=30, seed=i)

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(slow, range(5)))
    statuses = sorted(r.status for r in replies)
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses and 200 in statuses
    refused = next(r for r in replies if r.status == 429)
    assert int(refused.header("Retry-After")) >= 1
    assert refused.json()["error"]["code"] == "queue_full"


def test_route_header_only_from_the_own_sidecar(worker):
    """Issue #10: the worker registered whatever sources an X-Loraplex-Route header named, from anyone."""
    adapters_dir = worker.tmp / "adapters"
    route = json.dumps(
        {
            "pool": "tiny",
            "model": "injected",
            "adapters": {
                "injected": {
                    "pool": "tiny",
                    "source": {"type": "path", "path": str(adapters_dir / "style.safetensors")},
                },
                # re-pointing an adapter other users rely on
                "peft": {"pool": "tiny", "source": {"type": "path", "path": str(adapters_dir / "kohya.safetensors")}},
            },
            "names": {"injected": "injected"},
        }
    )
    body = {"model": "injected", "prompt": "x", "seed": 1, "steps": 1, "width": 64, "height": 64}
    raw = json.dumps(body).encode()
    for headers in (
        {"X-Loraplex-Route": route},
        {"X-Loraplex-Route": route, "X-Loraplex-Hop": "pod-0", "X-Loraplex-Hop-Auth": "v1 ts=1 sig=00"},
    ):
        r = post(worker.url + "/v1/generate", raw, headers={"Content-Type": "application/json", **headers})
        assert r.status == 401 and r.json()["error"]["code"] == "invalid_hop_signature", r.body
    names = {a["name"] for a in get(worker.url + "/v1/adapters").json()["adapters"]}
    assert "injected" not in names
    # The sidecar's signed route is taken.
    sig = HopKeys(worker.tmp / "hop-key").sign("POST", "/v1/generate", "pod-0", route, raw)
    headers = {"Content-Type": "application/json", "X-Loraplex-Route": route, "X-Loraplex-Hop": "pod-0"}
    r = post(worker.url + "/v1/generate", raw, headers={**headers, "X-Loraplex-Hop-Auth": sig}, timeout=120)
    assert r.status == 200, r.body
    # Put "peft" back the way the table has it (a route's entry replaces the table's until the table changes).
    fix = json.dumps(
        {
            "pool": "tiny",
            "adapters": {
                "peft": {
                    "pool": "tiny",
                    "aliases": ["peft-alias"],
                    "source": {"type": "path", "path": str(adapters_dir / "peft.safetensors")},
                }
            },
        }
    )
    b2 = json.dumps({"model": "peft", "prompt": "x", "seed": 1, "steps": 1, "width": 64, "height": 64}).encode()
    sig = HopKeys(worker.tmp / "hop-key").sign("POST", "/v1/generate", "pod-0", fix, b2)
    r = post(
        worker.url + "/v1/generate",
        b2,
        headers={**headers, "X-Loraplex-Route": fix, "X-Loraplex-Hop-Auth": sig},
        timeout=120,
    )
    assert r.status == 200, r.body


def test_worker_refuses_a_public_listen_address():
    r = subprocess.run(
        [PYTHON, "-m", "inference_pod.worker", "--host", "0.0.0.0", "--port", "1"], capture_output=True, timeout=120
    )
    assert r.returncode == 2 and b"loopback" in r.stderr


def test_metrics_and_probes(worker):
    assert get(worker.url + "/healthz").status == 200
    assert get(worker.url + "/readyz").json()["status"] == "ready"
    text = get(worker.url + "/metrics").body.decode()
    for name in (
        "loraplex_worker_requests_total",
        "loraplex_worker_adapter_swap_seconds_bucket",
        "loraplex_worker_adapter_lookups_total",
        "loraplex_worker_queue_depth",
        "loraplex_worker_resident_adapters",
        "loraplex_worker_adapter_bytes",
    ):
        assert name in text, name
    assert 'tier="gpu"' in text


def test_still_serving_after_everything(worker):
    r = gen(worker, model="kohya")
    assert r.status == 200 and r.body.startswith(PNG)
