"""The one LoRA factory: random adapters for a base model, made locally (tests, benchmarks).

Seeded random low-rank factors on the UNet's attention projections (and optionally the text encoders'), written as
real state dicts / .safetensors files in diffusers/peft, kohya, or kohya-with-SGM-block-names key format, with
per-module ranks and alphas when asked, so one set of weights can be fed both to the slot engine and to diffusers'
own loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from inference_pod.slots.targets import TEXT_ENCODER_TARGETS, UNET_TARGETS

KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
FORMATS = ("peft", "kohya", "sgm", "sgm-mixed")


def target_linears(model: nn.Module, suffixes: tuple[str, ...] = UNET_TARGETS) -> list[tuple[str, nn.Linear]]:
    """The linear layers of `model` whose path ends with one of `suffixes` (seeing through installed slot layers)."""
    out = []
    for path, mod in model.named_modules():
        base = getattr(mod, "base", mod)
        if isinstance(base, nn.Linear) and any(path == s or path.endswith("." + s) for s in suffixes):
            out.append((path, base))
    return out


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


def make_lora_state_dict(
    unet: nn.Module,
    rank: int = 4,
    seed: int = 0,
    fmt: str = "peft",
    alpha: float | None = None,
    strength: float = 1.0,
    suffixes: tuple[str, ...] = UNET_TARGETS,
    dtype: torch.dtype = torch.float32,
    text_encoders: Mapping[str, nn.Module] | None = None,
    mixed_ranks: bool = False,
) -> dict[str, torch.Tensor]:
    """A random LoRA state dict in one key format.

    fmt: 'peft'; 'kohya' (diffusers module names); 'sgm' (kohya keys with SGM block names, as SDXL kohya files
    have); 'sgm-mixed' (every other UNet module SGM-named, the rest diffusers-named).
    text_encoders: component name ('text_encoder', 'text_encoder_2') -> module, to target their attention too.
    mixed_ranks: every other module gets one rank row fewer (padding inside one adapter).
    strength scales the up factors; each factor is drawn as randn / sqrt(fan-in) (down) and randn * strength /
    sqrt(rank) (up), down then up per module, in module order.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if fmt == "peft" and alpha is not None:
        raise ValueError("peft state dicts carry no alpha (diffusers reads it from a config)")
    g = torch.Generator().manual_seed(seed)
    unet_config: Any = getattr(unet, "config", None)  # a diffusers UNet's config (for SGM block names)
    parts: list[tuple[str, str, nn.Linear]] = [("unet", p, m) for p, m in target_linears(unet, suffixes)]
    for comp, encoder in (text_encoders or {}).items():
        parts += [(comp, p, m) for p, m in target_linears(encoder, TEXT_ENCODER_TARGETS)]
    sd: dict[str, torch.Tensor] = {}
    for i, (comp, path, mod) in enumerate(parts):
        r = rank - 1 if mixed_ranks and i % 2 and rank > 1 else rank
        down = torch.randn(r, mod.in_features, generator=g) / mod.in_features**0.5
        up = torch.randn(mod.out_features, r, generator=g) * strength / r**0.5
        if fmt == "peft":
            sd[f"{comp}.{path}.lora_A.weight"] = down.to(dtype)
            sd[f"{comp}.{path}.lora_B.weight"] = up.to(dtype)
            continue
        name = path
        if comp == "unet" and (fmt == "sgm" or (fmt == "sgm-mixed" and i % 2)):
            name = sgm_path(path, unet_config.layers_per_block)
        key = KOHYA_PREFIX[comp] + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = down.to(dtype)
        sd[f"{key}.lora_up.weight"] = up.to(dtype)
        sd[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else r))
    return sd


def write_lora(path: Path, unet: nn.Module, **kwargs) -> Path:
    """`make_lora_state_dict` saved as a .safetensors file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(make_lora_state_dict(unet, **kwargs), str(path))
    return path
