"""A trained peft LoRA as the files the worker reads: peft keys, and kohya keys with SGM block names."""

from __future__ import annotations

import torch

from inference_pod.local.lora_factory import KOHYA_PREFIX, sgm_path


def unet_lora_state_dict(unet, adapter: str) -> dict[str, torch.Tensor]:
    """One peft adapter of a diffusers UNet as `unet.<module>.lora_A/B.weight` tensors (float32, on the CPU)."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(unet, adapter_name=adapter)
    return {f"unet.{k}": v.detach().float().cpu().contiguous() for k, v in sd.items()}


def peft_to_kohya(sd: dict[str, torch.Tensor], layers_per_block: int, alpha: float) -> dict[str, torch.Tensor]:
    """`unet.<path>.lora_A/B.weight` -> `lora_unet_<sgm path>.lora_down/up.weight` + `.alpha` (SDXL kohya files)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        comp, rest = key.split(".", 1)
        path, kind = rest.rsplit(".", 2)[0], rest.rsplit(".", 2)[1]
        if comp != "unet" or kind not in ("lora_A", "lora_B"):
            raise ValueError(f"not a peft UNet LoRA key: {key}")
        name = KOHYA_PREFIX["unet"] + sgm_path(path, layers_per_block).replace(".", "_")
        out[f"{name}.{'lora_down' if kind == 'lora_A' else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(alpha)
    return out
