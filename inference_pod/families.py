"""Base-model families (SDXL, FLUX): what differs between them for the slot engine, the formats and the worker.

A family is detected from the model itself, never from its name: a loaded pipeline by the class of its denoiser
(`UNet2DConditionModel` vs `FluxTransformer2DModel`), a local diffusers directory by its `model_index.json`
(pipeline `_class_name`, the `unet`/`transformer` entries). A LoRA file's family is read from its keys, so an
adapter made for the other family is refused with a message naming both families, not a key-mapping error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from inference_pod.slots.targets import FLUX_TARGETS, TEXT_ENCODER_TARGETS, UNET_TARGETS


@dataclass(frozen=True)
class ModelFamily:
    name: str  # "sdxl" | "flux": the value of BaseModelPool spec.model.pipeline
    label: str  # for messages
    denoiser: str  # the pipeline component LoRA slots go on
    denoiser_class: str
    pipeline_classes: tuple[str, ...]
    targets: tuple[str, ...]  # default LoRA target suffixes of the denoiser
    text_encoders: tuple[str, ...]  # components that may carry text-encoder LoRA
    text_encoder_targets: tuple[str, ...] = TEXT_ENCODER_TARGETS


SDXL = ModelFamily(
    name="sdxl",
    label="SDXL",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    pipeline_classes=("StableDiffusionXLPipeline",),
    targets=UNET_TARGETS,
    text_encoders=("text_encoder", "text_encoder_2"),
)
FLUX = ModelFamily(
    name="flux",
    label="FLUX",
    denoiser="transformer",
    denoiser_class="FluxTransformer2DModel",
    pipeline_classes=("FluxPipeline",),
    targets=FLUX_TARGETS,
    text_encoders=("text_encoder",),  # diffusers loads FLUX text-encoder LoRA into CLIP only
)
FAMILIES = {f.name: f for f in (SDXL, FLUX)}


class UnknownFamilyError(ValueError):
    """The model is neither an SDXL nor a FLUX pipeline."""


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of a loaded diffusers pipeline, from its denoiser's class."""
    for fam in FAMILIES.values():
        den = getattr(pipe, fam.denoiser, None)
        if den is not None and type(den).__name__ == fam.denoiser_class:
            return fam
    raise UnknownFamilyError(
        f"{type(pipe).__name__} is not a supported pipeline (supported: SDXL with a UNet2DConditionModel, "
        "FLUX with a FluxTransformer2DModel)"
    )


def family_of_directory(path: Path) -> ModelFamily:
    """The family of a local diffusers directory, from model_index.json (the denoiser entry, else the pipeline)."""
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise UnknownFamilyError(f"{path}: no readable model_index.json ({type(e).__name__})") from None
    for fam in FAMILIES.values():
        entry = index.get(fam.denoiser)
        if isinstance(entry, list) and len(entry) == 2 and entry[1] == fam.denoiser_class:
            return fam
    for fam in FAMILIES.values():
        if index.get("_class_name") in fam.pipeline_classes:
            return fam
    raise UnknownFamilyError(f"{path}: model_index.json names no SDXL UNet or FLUX transformer")


# Key fragments only one family's LoRA files have (diffusers/peft, kohya/A1111, ComfyUI, XLabs layouts).
_FLUX_MARKERS = (
    "transformer.transformer_blocks.",
    "transformer.single_transformer_blocks.",
    "lora_unet_double_blocks_",
    "lora_unet_single_blocks_",
    "diffusion_model.double_blocks.",
    "diffusion_model.single_blocks.",
    "double_blocks.",
    "single_blocks.",
    "lora_transformer_",
)
_SDXL_MARKERS = (
    "unet.",
    "lora_unet_down_blocks_",
    "lora_unet_up_blocks_",
    "lora_unet_mid_block_",
    "lora_unet_input_blocks_",
    "lora_unet_output_blocks_",
    "lora_unet_middle_block_",
    "lora_te2_",
    "text_encoder_2.",
    "down_blocks.",
    "up_blocks.",
    "mid_block.",
)


def family_of_lora_keys(keys: Iterable[str]) -> ModelFamily | None:
    """The family a LoRA file was made for, from its keys; None when they do not tell (e.g. text encoder only)."""
    flux = sdxl = False
    for k in keys:
        if k.startswith(_FLUX_MARKERS):
            flux = True
        elif k.startswith(_SDXL_MARKERS):
            sdxl = True
    if flux == sdxl:
        return None
    return FLUX if flux else SDXL
