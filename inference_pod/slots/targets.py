"""The modules a LoRA may target: the one list the engine, the worker's settings and the LoRA factory share."""

from __future__ import annotations

# The SDXL UNet's attention projections (self- and cross-attention): what published SDXL LoRAs train.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# The CLIP text encoders' attention projections (with --text-encoder-lora).
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
