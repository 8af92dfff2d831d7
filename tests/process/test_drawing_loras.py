"""The `drawing` model and its trained LoRAs through a real worker and sidecar: effects judged from the pixels.

One worker (`--model drawing`, CPU) and its sidecar on loopback; the routing table names the shipped LoRA files
in both formats the worker reads (peft keys and kohya keys with SGM block names). Each test draws a caption with
and without a LoRA and checks what changed: the outline LoRA empties the inside of the shape, the square LoRA turns
a circle into a square, the palette LoRA shifts the colour; two LoRAs in one request show both effects; scale 0
shows none. Pictures are 32 px, 8 steps (the model's native size and the steps it was evaluated with).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_pod.drawing.judge import Verdict, hollow_fraction, judge
from inference_pod.drawing.model import LORA_STYLES, SAMPLE_STEPS, WEIGHTS_DIR, lora_path
from loraplex.api.hopauth import write_random_key_file
from tests.helpers.httpclient import post
from tests.helpers.procs import ProcHandle, free_port, loopback_server_cmd, start_process, wait_ready

pytestmark = pytest.mark.slow

FORMATS = ("peft", "kohya")
RED_CIRCLE = "a red circle on a white background"
BLUE_TRIANGLE = "a blue triangle on a white background"
BLUE_CIRCLE = "a blue circle on a white background"
SEED = 1000


def shipped_max_rank() -> int:
    """The largest rank among the shipped LoRAs (outline's is larger than the others'): the pool's slot size."""
    from safetensors import safe_open

    ranks = []
    for style in LORA_STYLES:
        with safe_open(str(lora_path(style)), "pt") as st:
            ranks.append(int(st.metadata()["rank"]))
    return max(ranks)


@dataclass
class Stack:
    sidecar: ProcHandle

    def draw(self, prompt: str, adapters: list[dict] | None = None) -> np.ndarray:
        body: dict = {"model": "drawing", "prompt": prompt, "steps": SAMPLE_STEPS, "seed": SEED}
        body.update(width=32, height=32)
        if adapters:
            body["adapters"] = adapters
        r = post(self.sidecar.url + "/v1/generate", body, timeout=300)
        assert r.status == 200, r.body[:300]
        with Image.open(io.BytesIO(r.body)) as im:
            return np.asarray(im.convert("RGB"))

    def judge(self, prompt: str, adapters: list[dict] | None = None) -> Verdict:
        return judge(self.draw(prompt, adapters))


def name(style: str, fmt: str) -> str:
    return style if fmt == "peft" else f"{style}-{fmt}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("drawing")
    key = str(write_random_key_file(tmp / "hop-key"))
    table = tmp / "table.json"
    wport, sport = free_port(), free_port()
    table.write_text(
        json.dumps(
            {
                "version": 1,
                "generation": 1,
                "pools": {
                    "drawing": {
                        "baseModel": "drawing",
                        "endpoints": [{"name": "d-0", "url": f"http://127.0.0.1:{sport}"}],
                    }
                },
                "adapters": {
                    name(s, f): {"pool": "drawing", "source": {"type": "path", "path": str(lora_path(s, f))}}
                    for s in LORA_STYLES
                    for f in FORMATS
                },
            }
        )
    )
    handles: list[ProcHandle] = []
    try:
        worker = start_process(
            [
                *loopback_server_cmd("inference_pod.worker", wport),
                "--model",
                "drawing",
                "--torch-threads",
                "1",
                "--table",
                str(table),
                "--adapter-path-root",
                str(WEIGHTS_DIR / "loras"),
                "--disk-cache-dir",
                str(tmp / "cache"),
                "--hop-key-file",
                key,
                "--max-rank",
                str(shipped_max_rank()),
            ],
            wport,
            ready_path=None,
            log_dir=tmp,
        )
        handles.append(worker)
        wait_ready(worker, timeout=240)
        sidecar = start_process(
            [
                *loopback_server_cmd("inference_pod.router", sport),
                "--worker-url",
                worker.url,
                "--pod-name",
                "d-0",
                "--table-file",
                str(table),
                "--hop-key-file",
                key,
            ],
            sport,
            timeout=60,
            log_dir=tmp,
        )
        handles.append(sidecar)
        yield Stack(sidecar)
    finally:
        for h in reversed(handles):
            h.terminate()


@pytest.fixture(scope="module")
def plain(stack: Stack) -> dict[str, np.ndarray]:
    """The base model's pictures of the two captions the tests use."""
    return {p: stack.draw(p) for p in (RED_CIRCLE, BLUE_TRIANGLE, BLUE_CIRCLE)}


def test_base_model_draws_the_caption(plain: dict[str, np.ndarray]) -> None:
    circle, triangle = judge(plain[RED_CIRCLE]), judge(plain[BLUE_TRIANGLE])
    assert circle.shape == "circle" and circle.background == "white", circle
    assert triangle.describes("triangle", "blue") and triangle.background == "white", triangle
    assert judge(plain[BLUE_CIRCLE]).describes("circle", "blue")


@pytest.mark.parametrize("fmt", FORMATS)
def test_outline_lora_empties_the_inside(stack: Stack, plain: dict[str, np.ndarray], fmt: str) -> None:
    outlined = stack.draw(RED_CIRCLE, [{"name": name("outline", fmt)}])
    assert hollow_fraction(plain[RED_CIRCLE], plain[RED_CIRCLE]) == 0.0
    assert hollow_fraction(plain[RED_CIRCLE], outlined) > 0.5


@pytest.mark.parametrize("fmt", FORMATS)
def test_square_lora_turns_a_circle_into_a_square(stack: Stack, fmt: str) -> None:
    v = stack.judge(RED_CIRCLE, [{"name": name("square", fmt)}])
    assert v.shape == "square", v


@pytest.mark.parametrize("fmt", FORMATS)
def test_palette_lora_shifts_the_colour(stack: Stack, fmt: str) -> None:
    v = stack.judge(BLUE_CIRCLE, [{"name": name("palette", fmt)}])
    assert v.colour == "yellow", v  # blue -> yellow (the base draws it blue)


def test_two_loras_in_one_request_show_both_effects(stack: Stack) -> None:
    v = stack.judge(BLUE_TRIANGLE, [{"name": "square"}, {"name": "palette"}])
    assert v.shape == "square" and v.colour == "yellow", v


def test_scale_zero_shows_no_effect(stack: Stack, plain: dict[str, np.ndarray]) -> None:
    for style in LORA_STYLES:
        im = stack.draw(RED_CIRCLE, [{"name": style, "scale": 0}])
        assert np.abs(im.astype(int) - plain[RED_CIRCLE].astype(int)).max() <= 2, style


def test_shipped_files_are_small() -> None:
    total = sum(p.stat().st_size for p in Path(WEIGHTS_DIR).rglob("*") if p.is_file())
    assert total < 12 * 2**20
