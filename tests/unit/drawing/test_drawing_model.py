"""The shipped drawing model draws what the caption asks (a bad retrain fails here), loaded as the worker does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference_pod.drawing.judge import judge
from inference_pod.drawing.model import SAMPLE_STEPS


@pytest.fixture(scope="module")
def drawing_pipe():
    from inference_pod.worker.pipeline import load_pipeline

    pipe, _, _ = load_pipeline("drawing", device="cpu")
    return pipe


@pytest.mark.parametrize(
    ("prompt", "shape", "colour"),
    [
        ("a blue triangle on a white background", "triangle", "blue"),
        ("a blue circle on a white background", "circle", "blue"),
    ],
)
def test_base_model_draws_the_prompted_shape_and_colour(drawing_pipe, prompt: str, shape: str, colour: str) -> None:
    im = drawing_pipe(
        prompt=prompt,
        num_inference_steps=SAMPLE_STEPS,
        guidance_scale=5.0,
        width=32,
        height=32,
        generator=torch.Generator("cpu").manual_seed(1000),
        output_type="np",
    ).images[0]
    v = judge((np.clip(im, 0, 1) * 255).round().astype(np.uint8))
    assert v.describes(shape, colour) and v.background == "white" and not v.outline, v


def test_native_size_is_32_px(drawing_pipe) -> None:
    assert drawing_pipe.unet.config.sample_size * drawing_pipe.vae_scale_factor == 32
    assert drawing_pipe.unet.config.addition_embed_type == "text_time"
