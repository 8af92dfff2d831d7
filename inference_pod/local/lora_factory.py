"""The one LoRA factory: random adapters for a base model, made locally (tests, benchmarks).

Seeded random low-rank factors on the UNet's attention projections (and optionally the text encoders'), written as
real state dicts / .safetensors files in diffusers/peft, kohya, or kohya-with-SGM-block-names key format, with
per-module ranks and alphas when asked, so one set of weights can be fed both to the slot engine and to diffusers'
own loader. For FLUX (`make_flux_lora_state_dict`): the transformer's linears in diffusers/peft keys, or the
original BFL layer names in kohya keys (`lora_unet_double_blocks_0_img_attn_qkv`: fused q/k/v, which diffusers'
converter splits).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from inference_pod.slots.targets import FLUX_TARGETS, TEXT_ENCODER_TARGETS, UNET_TARGETS

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


def _flux_kohya_layers(transformer: nn.Module) -> list[tuple[str, int, int]]:
    """(kohya layer name, in features, out features) of a FluxTransformer2DModel, in the original BFL naming.

    The single blocks' fused `linear1` (q, k, v and the MLP input) is left out unless the model has FLUX.1's width:
    diffusers' converter splits it at FLUX.1's fixed sizes (3072, 3072, 3072, 12288).
    """
    cfg: Any = transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    out: list[tuple[str, int, int]] = []
    for i, block in enumerate(transformer.transformer_blocks):  # type: ignore[union-attr,arg-type]
        mlp = block.ff.net[2].in_features
        for side in ("img", "txt"):
            out += [
                (f"double_blocks_{i}_{side}_attn_qkv", inner, 3 * inner),
                (f"double_blocks_{i}_{side}_attn_proj", inner, inner),
                (f"double_blocks_{i}_{side}_mlp_0", inner, mlp),
                (f"double_blocks_{i}_{side}_mlp_2", mlp, inner),
                (f"double_blocks_{i}_{side}_mod_lin", inner, 6 * inner),
            ]
    for i, block in enumerate(transformer.single_transformer_blocks):  # type: ignore[union-attr,arg-type]
        mlp = block.proj_mlp.out_features
        if inner == 3072:
            out.append((f"single_blocks_{i}_linear1", inner, 3 * inner + mlp))
        out += [
            (f"single_blocks_{i}_linear2", inner + mlp, inner),
            (f"single_blocks_{i}_modulation_lin", inner, 3 * inner),
        ]
    return out


def _flux_xlabs_layers(transformer: nn.Module) -> list[tuple[str, int, int]]:
    """XLabs' layers: the joint blocks' fused image (1) and text (2) q/k/v and their output projections."""
    cfg: Any = transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    out: list[tuple[str, int, int]] = []
    for i in range(len(transformer.transformer_blocks)):  # type: ignore[arg-type]
        for n in (1, 2):
            proc = f"double_blocks.{i}.processor"
            out += [(f"{proc}.qkv_lora{n}", inner, 3 * inner), (f"{proc}.proj_lora{n}", inner, inner)]
    return out


def make_flux_lora_state_dict(
    transformer: nn.Module,
    rank: int = 4,
    seed: int = 0,
    fmt: str = "peft",
    alpha: float | None = None,
    strength: float = 1.0,
    suffixes: tuple[str, ...] = FLUX_TARGETS,
    dtype: torch.dtype = torch.float32,
    mixed_ranks: bool = False,
) -> dict[str, torch.Tensor]:
    """A random FLUX LoRA state dict: fmt 'peft' (the transformer's linears ending with `suffixes`, keys
    `transformer.<path>.lora_A.weight`), 'kohya' (every linear of the joint and single blocks in BFL naming, with
    alphas) or 'xlabs' (the joint blocks' attention, `double_blocks.0.processor.qkv_lora1.down.weight`); `suffixes`
    applies to 'peft' only. Factors drawn as in `make_lora_state_dict`.
    """
    if fmt not in ("peft", "kohya", "xlabs"):
        raise ValueError(f"unknown FLUX LoRA format {fmt!r}")
    if fmt == "xlabs" and alpha is not None:
        raise ValueError("XLabs state dicts carry no alpha")
    if fmt == "peft" and alpha is not None:
        raise ValueError("peft state dicts carry no alpha (diffusers reads it from a config)")
    g = torch.Generator().manual_seed(seed)
    if fmt == "peft":
        layers = [(p, m.in_features, m.out_features) for p, m in target_linears(transformer, suffixes)]
    elif fmt == "xlabs":
        layers = _flux_xlabs_layers(transformer)
    else:
        layers = _flux_kohya_layers(transformer)
    sd: dict[str, torch.Tensor] = {}
    for i, (name, n_in, n_out) in enumerate(layers):
        r = rank - 1 if mixed_ranks and i % 2 and rank > 1 else rank
        down = torch.randn(r, n_in, generator=g) / n_in**0.5
        up = torch.randn(n_out, r, generator=g) * strength / r**0.5
        if fmt == "peft":
            sd[f"transformer.{name}.lora_A.weight"] = down.to(dtype)
            sd[f"transformer.{name}.lora_B.weight"] = up.to(dtype)
        elif fmt == "xlabs":
            sd[f"{name}.down.weight"] = down.to(dtype)
            sd[f"{name}.up.weight"] = up.to(dtype)
        else:
            sd[f"lora_unet_{name}.lora_down.weight"] = down.to(dtype)
            sd[f"lora_unet_{name}.lora_up.weight"] = up.to(dtype)
            sd[f"lora_unet_{name}.alpha"] = torch.tensor(float(alpha if alpha is not None else r))
    return sd


def write_flux_lora(path: Path, transformer: nn.Module, **kwargs) -> Path:
    """`make_flux_lora_state_dict` saved as a .safetensors file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(make_flux_lora_state_dict(transformer, **kwargs), str(path))
    return path
