"""The built-in `tiny` model: an SDXL-architecture pipeline built in code.

Real diffusers/transformers classes (UNet2DConditionModel with text_time
conditioning, AutoencoderKL, two CLIP text encoders, CLIPTokenizer) with small
dimensions and seeded random weights, plus a tokenizer vocabulary generated
locally, so tests, CI and the local demo run with nothing downloaded.
Identical config and seed give bit-identical weights.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_MODEL_ID = "tiny"


@dataclass(frozen=True)
class TinyConfig:
    seed: int = 0
    block_out_channels: tuple[int, ...] = (32, 64)
    text_hidden: int = 32
    text_layers: int = 2
    vocab_size: int = 1000
    sample_size: int = 32


def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte -> printable character map used by byte-level BPE
    # (GPT-2/CLIP): printable latin-1 bytes map to themselves, the rest to
    # code points above 255.
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


def write_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    """Write a CLIP-compatible vocab.json and merges.txt with no merges.

    Every word is spelt out byte by byte, which is all a randomly initialised
    text encoder needs; the vocabulary is deterministic.
    """
    directory.mkdir(parents=True, exist_ok=True)
    symbols = sorted(set(_bytes_to_unicode().values()))
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for sym in symbols:
        vocab[sym] = len(vocab)
    for sym in symbols:
        vocab[sym + "</w>"] = len(vocab)
    vocab_path = directory / "vocab.json"
    merges_path = directory / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n")
    return vocab_path, merges_path


def build_tiny_tokenizer(directory: Path | None = None):
    from transformers import CLIPTokenizer

    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="loraplex-tiny-tok-"))
    vocab_path, merges_path = write_tokenizer_files(directory)
    # from_pretrained reads vocab.json/merges.txt the same way across transformers versions.
    return CLIPTokenizer.from_pretrained(
        str(directory),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=77,
        local_files_only=True,
    )


def build_tiny_pipeline(config: TinyConfig | None = None, dtype: torch.dtype = torch.float32):
    """Build the tiny StableDiffusionXLPipeline; deterministic for a given config."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = config or TinyConfig()
    tokenizer = build_tiny_tokenizer()
    n = len(tokenizer)
    assert n <= cfg.vocab_size, "generated vocabulary must fit the text encoder"
    text_cfg = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_hidden * 2,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=cfg.text_layers,
        vocab_size=cfg.vocab_size,
        hidden_act="gelu",
        projection_dim=cfg.text_hidden,
    )
    time_dim = 8
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(
        block_out_channels=cfg.block_out_channels,
        layers_per_block=2,
        sample_size=cfg.sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + cfg.text_hidden,
        cross_attention_dim=2 * cfg.text_hidden,
        norm_num_groups=1,
    )
    torch.manual_seed(cfg.seed + 1)
    vae = AutoencoderKL(
        block_out_channels=list(cfg.block_out_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(cfg.block_out_channels),
        up_block_types=["UpDecoderBlock2D"] * len(cfg.block_out_channels),
        latent_channels=4,
        sample_size=128,
        norm_num_groups=1,
    )
    torch.manual_seed(cfg.seed + 2)
    text_encoder = CLIPTextModel(text_cfg)
    torch.manual_seed(cfg.seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_cfg)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
