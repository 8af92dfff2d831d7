"""Several generation requests in one pipeline call, each with its own adapters.

The slot engine's per-sample mode gives every image of a batch its own
(slot, scale) list; the UNet's classifier-free guidance batch
[uncond..., cond...] repeats that list, and the text encoders see it once
per prompt batch. Each image keeps its own generator, so a batched request
produces what it would alone (within float tolerance).

Only requests that agree on everything the pipeline takes as a single
value can share a call: steps, size, guidance scale and whether a negative
prompt is given (an empty negative prompt is encoded, a missing one is
zeros in SDXL). `batch_key` is that grouping.

Whether to batch at all is a measured decision (see benchmarks/README.md):
the worker runs one request at a time by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference_pod.slots.engine import SlotEngine


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch; its adapters must already be resident in slots."""

    prompt: str
    adapters: tuple[tuple[int, float], ...]  # (slot, scale); empty: the base model
    generator: torch.Generator
    n: int = 1
    negative_prompt: str | None = None


def batch_key(steps: int, width: int, height: int, guidance_scale: float, negative_prompt: str | None) -> tuple:
    """Requests with equal keys can run in one pipeline call."""
    return (steps, width, height, float(guidance_scale), bool(negative_prompt))


def generate_batch(
    pipe,
    engine: SlotEngine,
    items: Sequence[BatchItem],
    *,
    steps: int,
    guidance_scale: float,
    width: int,
    height: int,
    **pipe_kwargs,
) -> list[list]:
    """Run the items in one pipeline call; returns each item's images, in order.

    Runs on the GPU job thread; leaves the engine with no adapter active.
    """
    if not items:
        return []
    if len({bool(it.negative_prompt) for it in items}) > 1:
        raise ValueError("items with and without a negative prompt cannot share a batch (see batch_key)")
    prompts: list[str] = []
    negatives: list[str] = []
    generators: list[torch.Generator] = []
    samples: list[list[tuple[int, float]]] = []
    for it in items:
        for _ in range(it.n):
            # The same generator object n times draws what one generator draws for n images.
            prompts.append(it.prompt)
            negatives.append(it.negative_prompt or "")
            generators.append(it.generator)
            samples.append(list(it.adapters))
    if all(s == samples[0] for s in samples):
        engine.activate(samples[0])  # one shared set: the cheaper shared path
    else:
        engine.activate_per_sample(samples)
    try:
        out = pipe(
            prompt=prompts,
            negative_prompt=negatives if items[0].negative_prompt else None,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            width=width,
            height=height,
            num_images_per_prompt=1,
            generator=generators,
            **pipe_kwargs,
        ).images
    finally:
        engine.activate([])
    result, i = [], 0
    for it in items:
        result.append(list(out[i : i + it.n]))
        i += it.n
    return result
