"""Load the worker's base pipeline: the built-in `tiny` (SDXL), `tiny-flux` (FLUX) or `drawing` (SDXL, draws shapes)
model, a local directory or a hub id. The model's family (`inference_pod.families`) is read from the loaded pipeline,
never from its name."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from inference_pod.drawing.model import DRAWING_MODEL_ID, model_dir
from inference_pod.worker.tiny_flux import TINY_FLUX_MODEL_ID, build_tiny_flux_pipeline
from inference_pod.worker.tiny_model import TINY_MODEL_ID, build_tiny_pipeline
from loraplex.progress import DirectoryProgress

BUILT_IN_MODELS = (TINY_MODEL_ID, TINY_FLUX_MODEL_ID, DRAWING_MODEL_ID)

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    return torch.float16 if device.type == "cuda" else torch.float32


def hub_cache_dir(repo_id: str) -> Path:
    """Where huggingface_hub keeps a model repo's files (HF_HUB_CACHE / HF_HOME honoured)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def load_pipeline(model: str, revision: str | None = None, dtype: str = "auto", device: str = "auto"):
    """Return (pipeline, device, dtype). Hub ids go through diffusers' from_pretrained with the HF cache."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if model == TINY_MODEL_ID:
        pipe = build_tiny_pipeline(dtype=dt)
    elif model == TINY_FLUX_MODEL_ID:
        pipe = build_tiny_flux_pipeline(dtype=dt)
    else:
        from diffusers import DiffusionPipeline

        if model == DRAWING_MODEL_ID:  # shipped in the package: a local diffusers directory
            model = str(model_dir())
        local = Path(model)
        kwargs: dict[str, Any] = {"dtype": dt}
        if not local.exists():
            kwargs["revision"] = revision or "main"
            if dt == torch.float16:
                kwargs["variant"] = "fp16"
        log.info("loading base model %s (revision %s, %s)", model, revision, dt)
        # A first start downloads several GB into the HF cache: say how far it is.
        what = f"base model {model} download"
        downloading: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if local.exists() else DirectoryProgress(hub_cache_dir(model), what)
        )
        with downloading:
            try:
                pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
            except (OSError, ValueError) as e:
                if "variant" not in kwargs:
                    raise
                log.info("no fp16 variant (%s); loading the default weights", e)
                kwargs.pop("variant")
                pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
        pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    return pipe, dev, dt
