"""Several generation requests in one pipeline call, each with its own adapters: the engine's per-sample mode.

An extension of the slot engine, outside its core: `activate_per_sample` sets the engine's states to a CUSTOM
update (`per_sample_update`) that gives every image of a batch its own (slot, scale) list; the UNet's
classifier-free guidance batch [uncond..., cond...] repeats that list, and the text encoders see it once
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

from inference_pod.slots.engine import AdapterMismatchError, SlotEngine
from inference_pod.slots.layers import SlotLoraLinear


def activate_per_sample(
    engine: SlotEngine, samples: list[list[tuple[int, float]]], components: tuple[str, ...] | None = None
) -> None:
    """Give each sample of the next batch its own adapters (an empty list: none for that sample).

    `samples[i]` is sample i's (slot, scale) list. A layer seeing a batch of m * len(samples) rows applies the list
    m times over, which is how the UNet's classifier-free guidance batch [uncond..., cond...] lines up. Allocates
    small tensors: this is a per-batch call, not the switch path. `engine.activate` ends the mode.
    """
    if not samples:
        raise ValueError("no samples")
    k = max(1, max(len(s) for s in samples))
    if k > engine.max_active:
        raise AdapterMismatchError(f"at most {engine.max_active} adapters per request")
    flat = [s for sample in samples for s, _ in sample]
    engine.check_slots(flat)
    rank = max([engine.slot_rank[s] for s in flat] + [1])
    n = len(samples)
    index = torch.zeros(n, k, dtype=torch.long)
    scales = torch.zeros(n, k)
    for i, sample in enumerate(samples):
        for j, (s, w) in enumerate(sample):
            index[i, j] = s
            scales[i, j] = w  # padding entries keep scale 0 (slot 0 times zero)
    rows_dtype = engine.state.rows.dtype
    flat_index = index.view(-1).to(engine.device)
    rows = scales.repeat_interleave(rank, dim=1).to(engine.device, rows_dtype)
    rows_full = scales.repeat_interleave(engine.max_rank, dim=1).to(engine.device, rows_dtype)
    epoch = engine.new_epoch()
    for comp in components or engine.components:
        engine.states[comp].custom(
            per_sample_update, k=k, rank=rank, epoch=epoch, index=flat_index, rows=rows, rows_full=rows_full
        )


def per_sample_update(x: torch.Tensor, y: torch.Tensor, layer: SlotLoraLinear) -> torch.Tensor:
    """y + each sample's own low-rank update: index [N*K], rows [N, K*r] for N samples.

    A batch of m*N rows repeats them m times (classifier-free guidance runs [uncond..., cond...] through the UNet).
    Under torch.compile all max_rank rows are read (`rows_full`), as in the shared path.
    """
    st = layer.state
    if torch.compiler.is_compiling():
        a_all, bt_all, rows = layer.lora_a, layer.lora_bt, st.rows_full
    else:
        a_all, bt_all, rows = layer.lora_a[:, : st.rank], layer.lora_bt[:, : st.rank], st.rows
    index = st.index
    n_in, n_out = a_all.shape[2], bt_all.shape[2]
    cd = st.compute_dtype or a_all.dtype
    out = y if y.is_contiguous() else y.contiguous()
    n, kr = rows.shape
    batch = x.shape[0]
    if batch % n:
        raise RuntimeError(f"per-sample adapters were set for {n} samples, but a layer got a batch of {batch}")
    rep = batch // n
    if rep > 1:
        index = index.repeat(rep)
        rows = rows.repeat(rep, 1)
    a = a_all.index_select(0, index).view(batch, kr, n_in).to(cd)
    bt = bt_all.index_select(0, index).view(batch, kr, n_out).to(cd)
    h = torch.bmm(x.reshape(batch, -1, n_in).to(cd), a.transpose(1, 2)) * rows.to(cd).unsqueeze(1)
    if out.dtype == cd:
        out.view(batch, -1, n_out).baddbmm_(h, bt)
    else:
        out.view(batch, -1, n_out).add_(torch.bmm(h, bt).to(out.dtype))
    return out


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
        activate_per_sample(engine, samples)
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
