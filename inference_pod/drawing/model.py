"""The `drawing` model: the `tiny` architecture at 32 px, with weights trained by inference_pod.drawing.train.

It ships in the package as a diffusers directory (weights/model, fp16 safetensors) and its LoRAs beside it
(weights/loras); the worker loads it by name like `tiny`, with nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from inference_pod.worker.tiny_model import TinyConfig

DRAWING_MODEL_ID = "drawing"
# The tiny model's classes and sizes; a 16x16 latent (32 px images, the VAE halves each side).
DRAWING_CONFIG = TinyConfig(seed=0, sample_size=16)
SAMPLE_STEPS = 8  # what the training's evaluation, the tests and the demo draw with
WEIGHTS_DIR = Path(__file__).parent / "weights"
LORA_STYLES = ("outline", "square", "palette")


def model_dir(root: Path = WEIGHTS_DIR) -> Path:
    """The diffusers directory of the drawing model (the shipped one unless `root` names another training's)."""
    return root / "model"


def lora_path(style: str, fmt: str = "peft", root: Path = WEIGHTS_DIR) -> Path:
    """A shipped LoRA file: fmt 'peft' (diffusers/peft keys) or 'kohya' (kohya keys, SGM block names)."""
    if style not in LORA_STYLES:
        raise ValueError(f"unknown drawing LoRA {style!r}")
    if fmt not in ("peft", "kohya"):
        raise ValueError(f"unknown LoRA format {fmt!r}")
    return root / "loras" / (f"{style}.safetensors" if fmt == "peft" else f"{style}.kohya.safetensors")


def load_trained(directory: Path, device: torch.device | str = "cpu"):
    """A trained drawing model's diffusers directory as an fp32 pipeline (its fp16 files widened), quiet."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(directory), dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_scheduler():
    """Euler with trailing timesteps: a few steps start from pure noise (the SDXL betas, as `tiny` has)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing"
    )


def time_ids(batch: int, device: torch.device) -> torch.Tensor:
    """SDXL's size conditioning for a 32 px picture: original size, crop corner, target size."""
    return torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]], device=device).repeat(batch, 1)
