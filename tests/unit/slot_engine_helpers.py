"""Helpers for the slot engine and adapter format tests: adapters in every key format, UNet inputs.

`make_adapter` writes random LoRA weights for the tiny pipeline's UNet (and
optionally both text encoders) in peft, kohya or kohya-SGM key naming, with
per-module ranks and alphas, so one set of weights can be fed both to the
engine and to diffusers' own loader.
"""

from __future__ import annotations

import re

import torch

from inference_pod.demo_adapters import target_linears

linears = target_linears  # the demo adapters and these test adapters target the same modules

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}


def sgm_path(path: str, layers_per_block: int) -> str:
    """diffusers UNet module path -> the original SGM/ldm name kohya files for SDXL use."""
    m = re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", path)
    if m:
        return f"input_blocks.{1 + int(m[1]) * (layers_per_block + 1) + int(m[2])}.1.{m[3]}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)", path)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", path)
    if m:
        return f"output_blocks.{int(m[1]) * (layers_per_block + 1) + int(m[2])}.1.{m[3]}"
    raise ValueError(f"no SGM name for {path}")


def make_adapter(pipe, rank: int = 4, seed: int = 0, fmt: str = "peft", alpha: float | None = None,
                 text_encoders: bool = False, mixed_ranks: bool = False, strength: float = 1.0,
                 ) -> dict[str, torch.Tensor]:
    """A random LoRA state dict in one key format.

    fmt: 'peft'; 'kohya' (diffusers module names); 'sgm' (kohya keys with SGM
    block names, as SDXL kohya files have); 'sgm-mixed' (every other UNet
    module SGM-named, the rest diffusers-named).
    mixed_ranks: every other module gets one rank row fewer (padding inside one adapter).
    """
    g = torch.Generator().manual_seed(seed)
    parts = [("unet", p, m) for p, m in linears(pipe.unet, UNET_TARGETS)]
    if text_encoders:
        parts += [("text_encoder", p, m) for p, m in linears(pipe.text_encoder, TE_TARGETS)]
        parts += [("text_encoder_2", p, m) for p, m in linears(pipe.text_encoder_2, TE_TARGETS)]
    lpb = pipe.unet.config.layers_per_block
    sd: dict[str, torch.Tensor] = {}
    for i, (comp, path, mod) in enumerate(parts):
        r = rank - 1 if mixed_ranks and i % 2 and rank > 1 else rank
        down = torch.randn(r, mod.in_features, generator=g) / mod.in_features ** 0.5
        up = torch.randn(mod.out_features, r, generator=g) * strength / r ** 0.5
        if fmt == "peft":
            if alpha is not None:
                raise ValueError("peft state dicts carry no alpha (diffusers reads it from a config)")
            sd[f"{comp}.{path}.lora_A.weight"] = down
            sd[f"{comp}.{path}.lora_B.weight"] = up
            continue
        name = path
        if comp == "unet" and (fmt == "sgm" or (fmt == "sgm-mixed" and i % 2)):
            name = sgm_path(path, lpb)
        key = KOHYA_PREFIX[comp] + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = down
        sd[f"{key}.lora_up.weight"] = up
        sd[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else r))
    return sd


def unet_inputs(pipe, batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = pipe.unet.config
    size = cfg.sample_size
    text_dim = pipe.text_encoder_2.config.projection_dim
    return {
        "sample": torch.randn(batch, cfg.in_channels, size, size, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=g),
        "added_cond_kwargs": {"text_embeds": torch.randn(batch, text_dim, generator=g),
                              "time_ids": torch.randn(batch, 6, generator=g)},
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
