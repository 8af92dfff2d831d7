"""Requests for different adapters in one pipeline call give what they give one by one."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from inference_pod.adapters.formats import canonicalize
from inference_pod.slots.batching import BatchItem, batch_key, generate_batch
from inference_pod.slots.engine import SlotEngine
from tests.unit.slots.slot_engine_helpers import TE_TARGETS, make_adapter

COMMON = {"steps": 2, "guidance_scale": 5.0, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def setup(tiny_pipe):
    pipe = copy.deepcopy(tiny_pipe)
    engine = SlotEngine(
        pipe,
        n_slots=3,
        max_rank=8,
        max_active=2,
        components=("unet", "text_encoder", "text_encoder_2"),
        target_suffixes=("to_q", "to_k", "to_v", "to_out.0", *TE_TARGETS),
    )
    cfg = pipe.unet.config
    for slot, (rank, te) in enumerate([(4, False), (8, True), (2, False)]):
        sd = make_adapter(pipe, rank=rank, seed=70 + slot, text_encoders=te, fmt="kohya", alpha=rank / 2)
        engine.load(slot, engine.prepare(canonicalize(sd, cfg)))
    yield pipe, engine
    engine.uninstall()


def _one_by_one(pipe, engine, item):
    engine.activate(list(item.adapters))
    try:
        return pipe(
            prompt=item.prompt,
            negative_prompt=item.negative_prompt,
            num_inference_steps=COMMON["steps"],
            guidance_scale=COMMON["guidance_scale"],
            width=COMMON["width"],
            height=COMMON["height"],
            num_images_per_prompt=item.n,
            generator=item.generator,
            output_type="np",
        ).images
    finally:
        engine.activate([])


def _items(negative):
    def gen(seed):
        return torch.Generator().manual_seed(seed)

    neg = "blurry" if negative else None
    return [
        BatchItem("a red cube", ((0, 1.0),), gen(1), negative_prompt=neg),
        BatchItem("a blue sphere", ((1, 0.8), (2, 1.3)), gen(2), n=2, negative_prompt=neg),
        BatchItem("plain base model", (), gen(3), negative_prompt=neg),
        BatchItem("text encoder lora", ((1, 1.0),), gen(4), negative_prompt=neg),
    ]


@pytest.mark.parametrize("negative", [False, True])
def test_batched_requests_match_one_by_one(setup, negative):
    pipe, engine = setup
    batched = generate_batch(pipe, engine, _items(negative), output_type="np", **COMMON)
    alone = [_one_by_one(pipe, engine, it) for it in _items(negative)]
    assert [len(b) for b in batched] == [1, 2, 1, 1]
    for got, want in zip(batched, alone, strict=True):
        np.testing.assert_allclose(np.stack(got), want, atol=2e-4, rtol=0)
    # the adapters really differ per image
    assert np.abs(batched[0][0] - batched[2][0]).max() > 1e-3
    assert engine.state.mode == 0


def test_batch_key_and_mixed_negative_prompts(setup):
    pipe, engine = setup
    assert batch_key(2, 64, 64, 5, None) == batch_key(2, 64, 64, 5.0, "")
    assert batch_key(2, 64, 64, 5, None) != batch_key(2, 64, 64, 5, "ugly")
    items = [BatchItem("a", (), torch.Generator()), BatchItem("b", (), torch.Generator(), negative_prompt="c")]
    with pytest.raises(ValueError, match="negative prompt"):
        generate_batch(pipe, engine, items, **COMMON)
