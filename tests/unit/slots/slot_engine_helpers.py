"""Helpers for the slot engine and adapter format tests: adapters in every key format (from the one LoRA
factory, `inference_pod.local.lora_factory`), UNet inputs and outputs.
"""

from __future__ import annotations

import torch

from inference_pod.local.lora_factory import make_lora_state_dict
from inference_pod.slots.targets import TEXT_ENCODER_TARGETS

TE_TARGETS = TEXT_ENCODER_TARGETS


def make_adapter(
    pipe,
    rank: int = 4,
    seed: int = 0,
    fmt: str = "peft",
    alpha: float | None = None,
    text_encoders: bool = False,
    mixed_ranks: bool = False,
    strength: float = 1.0,
) -> dict[str, torch.Tensor]:
    """A random LoRA state dict for the tiny pipeline (see `make_lora_state_dict` for the formats)."""
    encoders = {"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2} if text_encoders else None
    return make_lora_state_dict(
        pipe.unet,
        rank=rank,
        seed=seed,
        fmt=fmt,
        alpha=alpha,
        strength=strength,
        text_encoders=encoders,
        mixed_ranks=mixed_ranks,
    )


def unet_inputs(pipe, batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = pipe.unet.config
    size = cfg.sample_size
    text_dim = pipe.text_encoder_2.config.projection_dim
    return {
        "sample": torch.randn(batch, cfg.in_channels, size, size, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, text_dim, generator=g),
            "time_ids": torch.randn(batch, 6, generator=g),
        },
    }


def unet_out(pipe, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.unet(**inputs).sample


def slice_inputs(inputs: dict, rows: list[int]) -> dict:
    idx = torch.tensor(rows)
    return {
        "sample": inputs["sample"][idx],
        "timestep": inputs["timestep"],
        "encoder_hidden_states": inputs["encoder_hidden_states"][idx],
        "added_cond_kwargs": {k: v[idx] for k, v in inputs["added_cond_kwargs"].items()},
    }
