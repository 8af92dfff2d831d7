"""Generate LoRA adapters for a base model locally (tests, benchmarks, the local demo).

Seeded random low-rank factors on the UNet's attention projections, written
as real .safetensors files in diffusers/peft or kohya key format.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def target_linears(model: nn.Module, suffixes: tuple[str, ...] = DEFAULT_TARGETS) -> list[tuple[str, nn.Linear]]:
    out = []
    for path, mod in model.named_modules():
        base = getattr(mod, "base", mod)  # see through an installed slot layer
        if isinstance(base, nn.Linear) and any(path == s or path.endswith("." + s) for s in suffixes):
            out.append((path, base))
    return out


def make_lora_state_dict(unet: nn.Module, rank: int = 4, seed: int = 0, fmt: str = "peft", alpha: float | None = None,
                         strength: float = 1.0, suffixes: tuple[str, ...] = DEFAULT_TARGETS,
                         dtype: torch.dtype = torch.float32, text_encoder: nn.Module | None = None,
                         ) -> dict[str, torch.Tensor]:
    """A random LoRA in the given key format ('peft' or 'kohya')."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    parts: list[tuple[str, str, nn.Linear]] = [("unet", p, m) for p, m in target_linears(unet, suffixes)]
    if text_encoder is not None:
        parts += [("text_encoder", p, m) for p, m in target_linears(text_encoder, ("q_proj", "k_proj", "v_proj",
                                                                                    "out_proj"))]
    for comp, path, mod in parts:
        down = torch.randn(rank, mod.in_features, generator=g) / mod.in_features ** 0.5
        up = torch.randn(mod.out_features, rank, generator=g) * strength / rank ** 0.5
        if fmt == "peft":
            sd[f"{comp}.{path}.lora_A.weight"] = down.to(dtype)
            sd[f"{comp}.{path}.lora_B.weight"] = up.to(dtype)
        elif fmt == "kohya":
            prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_"}[comp]
            key = prefix + path.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = down.to(dtype)
            sd[f"{key}.lora_up.weight"] = up.to(dtype)
            sd[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
        else:
            raise ValueError(f"unknown format {fmt!r}")
    return sd


def write_lora(path: Path, unet: nn.Module, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(make_lora_state_dict(unet, **kwargs), str(path))
    return path
