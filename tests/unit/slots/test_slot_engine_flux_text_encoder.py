"""FLUX LoRAs that also carry CLIP text-encoder layers, against diffusers' `FluxPipeline.load_lora_weights`.

diffusers loads a FLUX LoRA's text-encoder layers into the CLIP encoder (`text_encoder`) only; FLUX's CLIP gives
the pooled prompt embedding, so such a layer changes the image through the transformer's conditioning. A pool
started with `--text-encoder-lora` (the engine's components include `text_encoder`) must produce diffusers' image;
a pool without it refuses the adapter, naming the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch

from inference_pod.local.lora_factory import make_flux_lora_state_dict, target_linears
from inference_pod.slots.engine import AdapterMismatchError, SlotEngine
from inference_pod.slots.targets import FLUX_TARGETS, TEXT_ENCODER_TARGETS
from tests.unit.slots.flux_helpers import flux_lora


@pytest.fixture(scope="module")
def pristine(tiny_flux_pipe):
    return copy.deepcopy(tiny_flux_pipe)


def clip_layers(pipe, fmt: str, rank: int, seed: int, alpha: float) -> dict[str, torch.Tensor]:
    """Random LoRA layers on the CLIP encoder's attention projections, peft (`text_encoder.<path>.lora_A`) or
    kohya (`lora_te1_<path>.lora_down`, with alpha) keyed."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for path, mod in target_linears(pipe.text_encoder, TEXT_ENCODER_TARGETS):
        down = torch.randn(rank, mod.in_features, generator=g) / mod.in_features**0.5
        up = torch.randn(mod.out_features, rank, generator=g) * 2.0 / rank**0.5
        if fmt == "peft":
            sd[f"text_encoder.{path}.lora_A.weight"] = down
            sd[f"text_encoder.{path}.lora_B.weight"] = up
        else:
            key = "lora_te1_" + path.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = down
            sd[f"{key}.lora_up.weight"] = up
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def flux_lora_with_clip(pipe, fmt: str, rank: int = 4, seed: int = 7) -> dict[str, torch.Tensor]:
    alpha = 2.0 if fmt == "kohya" else None
    sd = make_flux_lora_state_dict(pipe.transformer, rank=rank, seed=seed, fmt=fmt, alpha=alpha)
    return {**sd, **clip_layers(pipe, fmt, rank, seed + 1, alpha=2.0)}


def fresh(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies for diffusers, whose kohya converter scales the text-encoder factors in place."""
    return {k: v.clone() for k, v in sd.items()}


def image(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    kw = {"num_inference_steps": 2, "width": 32, "height": 32, "max_sequence_length": 16}
    return torch.from_numpy(pipe("a red fox", generator=g, output_type="np", **kw).images)


@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_clip_layers_served_like_diffusers(pristine, fmt):
    sd = flux_lora_with_clip(pristine, fmt)
    before = fresh(sd)
    lora = flux_lora(sd)
    for key, value in sd.items():  # canonicalizing leaves the caller's tensors alone
        assert torch.equal(value, before[key]), key
    assert sum(name.startswith("text_encoder.") for name in lora.modules) == len(
        target_linears(pristine.text_encoder, TEXT_ENCODER_TARGETS)
    )
    pipe = copy.deepcopy(pristine)
    engine = SlotEngine(
        pipe,
        n_slots=2,
        max_rank=8,
        target_suffixes=FLUX_TARGETS + TEXT_ENCODER_TARGETS,
        components=("transformer", "text_encoder"),
    )
    ref = copy.deepcopy(pristine)
    try:
        engine.load(1, engine.prepare(lora))
        engine.activate([(1, 0.7)])
        ref.load_lora_weights(fresh(sd), adapter_name="a")
        ref.set_adapters(["a"], [0.7])
        assert any(hasattr(m, "lora_A") for m in ref.text_encoder.modules()), "diffusers left CLIP alone"
        want = image(ref)
        # The CLIP layers matter: the same adapter without them gives another image.
        ref.unload_lora_weights()
        no_clip = {k: v for k, v in sd.items() if not k.startswith(("text_encoder.", "lora_te1_"))}
        ref.load_lora_weights(fresh(no_clip), adapter_name="b")
        ref.set_adapters(["b"], [0.7])
        assert (image(ref) - want).abs().max() > 1e-3
        torch.testing.assert_close(image(pipe), want, atol=1e-4, rtol=0)
        engine.activate([])
        torch.testing.assert_close(image(pipe), image(pristine), atol=0, rtol=0)
    finally:
        engine.uninstall()
        ref.unload_lora_weights()


def test_pool_without_text_encoder_lora_refuses_clip_layers(pristine):
    pipe = copy.deepcopy(pristine)
    engine = SlotEngine(pipe, n_slots=1, max_rank=8, target_suffixes=FLUX_TARGETS, components=("transformer",))
    try:
        with pytest.raises(AdapterMismatchError, match="--text-encoder-lora"):
            engine.prepare(flux_lora(flux_lora_with_clip(pristine, "peft")))
    finally:
        engine.uninstall()
