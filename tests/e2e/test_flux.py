"""A FLUX pool on the real node: `tiny-flux` behind the operator, the chart and kube-proxy.

A BaseModelPool declaring `pipeline: flux` on the built-in `tiny-flux` model (built in the pod, nothing
downloaded), two LoraAdapters with path sources on the pool's model-cache claim: a FLUX LoRA changes the image
served through the pool's Service; an SDXL LoRA on the same pool is refused with a 422 naming both families, and the
pool keeps serving. Modelled on test_operator.test_adapter_changes_the_image (one pool of one replica: 2 cores).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_pod.families import FLUX, SDXL
from tests.e2e.support import (
    GEN,
    diagnose,
    generate_until_ok,
    host_path_claim,
    http,
    kubectl,
    kubectl_json,
    lora_adapter,
    png_of,
    service_ip,
    tiny_pool,
    wait_pool_ready,
)

pytestmark = pytest.mark.e2e

POOL = "tiny-flux"
FLUX_GEN = {**GEN, "model": POOL}


@pytest.fixture
def flux_adapter_volume(pool_ns: str, real_node: str) -> Iterator[str]:
    """A FLUX LoRA for tiny-flux and an SDXL LoRA for tiny in a host directory, as the claim `lora`."""
    from inference_pod.local.lora_factory import write_flux_lora, write_lora
    from inference_pod.worker.tiny_flux import build_tiny_flux_pipeline
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    host_dir = Path(tempfile.mkdtemp(prefix="lpx-e2e-flux-"))
    host_dir.chmod(0o777)  # the pods run as uid 10001; hostPath gets no fsGroup
    loras = host_dir / "loras"  # under spec.adapterSources.pathRoots (default /models/loras)
    loras.mkdir(mode=0o755)
    write_flux_lora(
        loras / "flux-fox.safetensors", build_tiny_flux_pipeline().transformer, rank=4, seed=7, strength=3.0
    )
    write_lora(loras / "sdxl-fox.safetensors", build_tiny_pipeline().unet, rank=4, seed=7, strength=3.0)
    for f in loras.iterdir():
        f.chmod(0o644)
    pv, docs = host_path_claim(pool_ns, real_node, host_dir, "lora")
    try:
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
        yield "lora"
    finally:
        kubectl("delete", "namespace", pool_ns, "--wait=true", "--timeout=120s", check=False, timeout=150)
        kubectl("delete", "pv", pv, "--wait=false", check=False)
        shutil.rmtree(host_dir, ignore_errors=True)


def answer_once_routed(url: str, body: dict, timeout: float) -> tuple[int, bytes]:
    """The first answer that is not the router's 404 (the routing table has not caught up with the adapter yet)."""
    deadline = time.monotonic() + timeout
    while True:
        status, data = http("POST", url, body, timeout=120)
        if status != 404 or time.monotonic() > deadline:
            return status, data
        time.sleep(1)


def test_flux_pool_serves_flux_adapters_and_refuses_sdxl_ones(
    release: tuple[str, str], pool_ns: str, flux_adapter_volume: str, real_node: str, inference_image: str
) -> None:
    ns = pool_ns
    model = {"name": POOL, "dtype": "float32", "pipeline": "flux"}
    pool = tiny_pool(POOL, real_node, inference_image, model=model, modelCache={"claimName": flux_adapter_volume})
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pool))
    wait_pool_ready(ns, POOL, timeout=360)
    url = f"http://{service_ip(ns, POOL)}/v1/images/generations"
    t0 = time.monotonic()
    _, body = generate_until_ok(url, FLUX_GEN, timeout=60)
    base_s = time.monotonic() - t0
    base = png_of(body)

    for name in ("flux-fox", "sdxl-fox"):
        adapter = lora_adapter(name, POOL, {"type": "path", "path": f"/models/loras/{name}.safetensors"})
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(adapter))
    t0 = time.monotonic()
    _, body = generate_until_ok(url, {**FLUX_GEN, "model": "flux-fox"}, timeout=120)
    first_s = time.monotonic() - t0
    assert png_of(body) != base, "the FLUX adapter did not change the image"

    status, body = answer_once_routed(url, {**FLUX_GEN, "model": "sdxl-fox"}, timeout=120)
    assert status == 422, (status, body[:500], diagnose(ns))
    text = json.loads(body)["error"]["message"]
    assert f"this is a {SDXL.label} LoRA" in text and f"this pool serves a {FLUX.label} model" in text, text
    # The refusal is remembered and the pool keeps serving: the FLUX adapter again, warm.
    status, body = http("POST", url, {**FLUX_GEN, "model": "sdxl-fox"}, timeout=120)
    assert status == 422, (status, body[:300])
    t0 = time.monotonic()
    status, body = http("POST", url, {**FLUX_GEN, "model": "flux-fox"}, timeout=120)
    warm_s = time.monotonic() - t0
    assert status == 200, (status, body[:300])
    png_of(body)
    print(
        f"FIGURES FLUX pool: base image {base_s:.1f}s; adapter apply->first image {first_s:.1f}s; "
        f"warm adapter request {warm_s * 1000:.0f} ms"
    )
    for name in ("flux-fox", "sdxl-fox"):
        obj = kubectl_json("get", "loraadapter", name, "-n", ns)
        print(f"{name} status:", json.dumps(obj.get("status", {}))[:400])
