"""A worker serving a FLUX pool as a real process on loopback: tiny-flux loaded from a saved directory, FLUX LoRAs
in peft and kohya format, an SDXL LoRA refused with a 422 naming both families.

The model directory has a neutral name: the worker must read the family from its model_index.json.
Generations are tiny (32x32, 2 steps) because CPU time is scarce.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess

import pytest

from tests.helpers.httpclient import get, post
from tests.helpers.procs import PYTHON, free_port, start_process

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"

MAKE_MODEL_AND_ADAPTERS = """
import sys
from pathlib import Path
from inference_pod.local.lora_factory import write_flux_lora, write_lora
from inference_pod.worker.tiny_flux import build_tiny_flux_pipeline
from inference_pod.worker.tiny_model import build_tiny_pipeline
out = Path(sys.argv[1])
pipe = build_tiny_flux_pipeline()
pipe.save_pretrained(out / "base-model")
t = pipe.transformer
write_flux_lora(out / "adapters" / "peft.safetensors", t, rank=4, seed=1, strength=3.0)
write_flux_lora(out / "adapters" / "kohya.safetensors", t, rank=8, seed=2, fmt="kohya", alpha=4.0, strength=3.0)
write_flux_lora(out / "adapters" / "rank32.safetensors", t, rank=32, seed=3)
write_lora(out / "adapters" / "sdxl.safetensors", build_tiny_pipeline().unet, rank=4, seed=4)
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flux-worker")
    subprocess.run([PYTHON, "-c", MAKE_MODEL_AND_ADAPTERS, str(tmp)], check=True)

    def path(name: str) -> dict:
        return {"pool": "flux", "source": {"type": "path", "path": str(tmp / "adapters" / f"{name}.safetensors")}}

    table = {
        "version": 1,
        "pools": {"flux": {"baseModel": str(tmp / "base-model")}},
        "adapters": {name: path(name) for name in ("peft", "kohya", "rank32", "sdxl")},
    }
    (tmp / "table.json").write_text(json.dumps(table))
    port = free_port()
    cmd = [
        PYTHON,
        "-m",
        "inference_pod.worker",
        "--model",
        str(tmp / "base-model"),
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
        "--max-width",
        "128",
        "--max-height",
        "128",
    ]
    handle = start_process(cmd, port, timeout=300)
    yield handle
    handle.terminate()


def gen(worker, **body):
    body = {"prompt": "a red fox", "seed": 1, "steps": 2, "width": 32, "height": 32, **body}
    return post(worker.url + "/v1/generate", body, timeout=120)


def test_the_family_comes_from_the_model_directory(worker):
    ready = get(worker.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["family"] == "flux"


def test_flux_loras_change_the_image_deterministically(worker):
    base = gen(worker, model="flux", seed=42)
    a1 = gen(worker, model="peft", seed=42)
    b = gen(worker, model="kohya", seed=42)
    a2 = gen(worker, model="peft", seed=42)
    assert base.status == a1.status == b.status == a2.status == 200, (base.body, a1.body, b.body)
    assert a1.body.startswith(PNG) and a1.body == a2.body
    assert len({base.body, a1.body, b.body}) == 3
    assert a2.header("X-Loraplex-Swap-Tier") == "gpu"


def test_two_flux_adapters_with_scales(worker):
    one = gen(worker, model="flux", adapters=[{"name": "peft", "scale": 1.0}], seed=5)
    two = gen(worker, model="flux", adapters=[{"name": "peft", "scale": 1.0}, {"name": "kohya", "scale": 0.7}], seed=5)
    assert one.status == two.status == 200
    assert one.body != two.body
    assert one.body == gen(worker, model="peft", seed=5).body


def test_openai_images_api(worker):
    r = post(
        worker.url + "/v1/images/generations",
        {"model": "kohya", "prompt": "x", "n": 2, "size": "32x32", "steps": 1, "seed": 3},
        timeout=120,
    )
    assert r.status == 200, r.body
    assert all(base64.b64decode(d["b64_json"]).startswith(PNG) for d in r.json()["data"])


@pytest.mark.parametrize(
    "name,message",
    [
        ("sdxl", r"this is a SDXL LoRA .*this pool serves a FLUX model"),
        ("rank32", "rank 32 exceeds the pool's max rank 16"),
    ],
)
def test_bad_adapters_are_422_and_the_worker_keeps_serving(worker, name, message):
    for _ in range(2):  # the second answer comes from the remembered verdict
        r = gen(worker, model=name)
        assert r.status == 422, r.body
        err = r.json()["error"]
        assert err["param"] == "model" and re.search(message, err["message"]), err
    adapters = {a["name"]: a for a in get(worker.url + "/v1/adapters").json()["adapters"]}
    assert re.search(message, adapters[name]["bad"])
    assert gen(worker, model="peft").status == 200


def test_bad_fields_are_named(worker):
    r = gen(worker, model="peft", width=100)
    assert r.status == 400 and r.json()["error"]["param"] == "width"
    r = gen(worker, model="peft", steps=0)
    assert r.status == 400 and r.json()["error"]["param"] == "steps"


def test_metrics_count_flux_requests(worker):
    text = get(worker.url + "/metrics").body.decode()
    assert 'loraplex_worker_requests_total{endpoint="generate",status="200"}' in text
    assert 'loraplex_worker_requests_total{endpoint="generate",status="422"}' in text
    assert "loraplex_worker_bad_adapters 2.0" in text
