"""Helpers for the FLUX slot engine tests: adapters from the one LoRA factory, transformer inputs and outputs."""

from __future__ import annotations

import torch

from inference_pod.adapters.formats import CanonicalLora, canonicalize
from inference_pod.families import FLUX
from inference_pod.local.lora_factory import make_flux_lora_state_dict


def make_flux_adapter(pipe, **kwargs) -> dict[str, torch.Tensor]:
    return make_flux_lora_state_dict(pipe.transformer, **kwargs)


def flux_lora(sd: dict[str, torch.Tensor]) -> CanonicalLora:
    return canonicalize(dict(sd), family=FLUX)


def transformer_inputs(pipe, batch: int = 2, seed: int = 0, n_img: int = 16, n_txt: int = 8) -> dict:
    """Packed image tokens, T5 tokens, the pooled CLIP embedding, timestep, guidance and the rotary ids."""
    g = torch.Generator().manual_seed(seed)
    cfg = pipe.transformer.config
    inputs = {
        "hidden_states": torch.randn(batch, n_img, cfg.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(batch, n_txt, cfg.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        "timestep": torch.full((batch,), 0.6),
        "img_ids": torch.randn(n_img, 3, generator=g),
        "txt_ids": torch.zeros(n_txt, 3),
    }
    if cfg.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def transformer_out(pipe, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.transformer(**inputs).sample
