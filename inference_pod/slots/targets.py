"""The modules a LoRA may target: the one list the engine, the worker's settings and the LoRA factory share."""

from __future__ import annotations

# The SDXL UNet's attention projections (self- and cross-attention): what published SDXL LoRAs train.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# The CLIP text encoders' attention projections (with --text-encoder-lora).
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

# FLUX transformer linears, grouped so a layout keeps each group contiguous (slots.engine orders modules by the
# group of their suffix): the joint blocks' image and context attention, the single blocks' attention, then the
# MLPs (joint blocks' ff/ff_context, single blocks' proj_mlp/proj_out), then the AdaLN modulation linears. An
# attention-only adapter is one contiguous span of a slot row.
FLUX_ATTENTION_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)
FLUX_MLP_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out")
FLUX_NORM_TARGETS = ("norm1.linear", "norm1_context.linear", "norm.linear")
FLUX_TARGETS = FLUX_ATTENTION_TARGETS + FLUX_MLP_TARGETS + FLUX_NORM_TARGETS
