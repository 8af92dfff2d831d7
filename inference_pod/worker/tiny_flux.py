"""The built-in `tiny-flux` model: a FLUX.1-architecture pipeline built in code.

Real diffusers/transformers classes (FluxTransformer2DModel with joint and
single blocks, a 16-channel-style AutoencoderKL without quant convs, a CLIP
text encoder for the pooled embedding and a T5 encoder for the sequence) with
small dimensions and seeded random weights. Both tokenizers are made on the
machine: the CLIP one from the byte-level vocabulary `tiny` uses, the T5 one
as a Unigram model over the same symbols (transformers builds it from a
vocabulary list, no sentencepiece file). Nothing is downloaded; identical
config and seed give bit-identical weights. `pipe.save_pretrained(dir)` writes
a directory that `DiffusionPipeline.from_pretrained(dir)` (and so the worker's
`--model DIR`) loads back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inference_pod.worker.tiny_model import _bytes_to_unicode, build_tiny_tokenizer

TINY_FLUX_MODEL_ID = "tiny-flux"


@dataclass(frozen=True)
class TinyFluxConfig:
    seed: int = 0
    num_layers: int = 1  # joint (double) blocks; FLUX.1 has 19
    num_single_layers: int = 2  # single blocks; FLUX.1 has 38
    heads: int = 2
    head_dim: int = 8  # = sum(axes_dims_rope)
    axes_dims_rope: tuple[int, int, int] = (2, 2, 4)
    text_hidden: int = 32  # CLIP hidden = pooled projection dim; T5 d_model = joint attention dim
    t5_layers: int = 2
    vocab_size: int = 1000
    guidance_embeds: bool = True  # FLUX.1-dev's shape; False for -schnell's
    vae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    sample_size: int = 64  # native image size: the VAE config's sample_size


def build_tiny_t5_tokenizer(max_length: int = 64):
    """A T5 tokenizer (Unigram) over the byte-level symbols, with T5's special tokens; built from a vocab list."""
    from transformers import T5TokenizerFast

    symbols = sorted(set(_bytes_to_unicode().values()))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(s, -3.0) for s in symbols] + [("▁" + s, -2.5) for s in symbols]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


def build_tiny_flux_pipeline(config: TinyFluxConfig | None = None, dtype: torch.dtype = torch.float32):
    """Build the tiny FluxPipeline; deterministic for a given config."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg = config or TinyFluxConfig()
    assert sum(cfg.axes_dims_rope) == cfg.head_dim, "FLUX's rotary axes must add up to the head dim"
    tokenizer = build_tiny_tokenizer()
    tokenizer_2 = build_tiny_t5_tokenizer()
    assert max(len(tokenizer), len(tokenizer_2)) <= cfg.vocab_size, "generated vocabularies must fit the encoders"
    torch.manual_seed(cfg.seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=cfg.latent_channels * 4,  # 2x2 latent patches packed into channels
        num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.heads,
        joint_attention_dim=cfg.text_hidden,
        pooled_projection_dim=cfg.text_hidden,
        guidance_embeds=cfg.guidance_embeds,
        axes_dims_rope=cfg.axes_dims_rope,
    )
    torch.manual_seed(cfg.seed + 1)
    vae = AutoencoderKL(
        block_out_channels=list(cfg.vae_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(cfg.vae_channels),
        up_block_types=["UpDecoderBlock2D"] * len(cfg.vae_channels),
        latent_channels=cfg.latent_channels,
        sample_size=cfg.sample_size,
        norm_num_groups=1,
        use_quant_conv=False,  # as FLUX's autoencoder
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=0.3611,
    )
    torch.manual_seed(cfg.seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 2,
            layer_norm_eps=1e-5,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=cfg.vocab_size,
            hidden_act="gelu",
            projection_dim=cfg.text_hidden,
        )
    )
    torch.manual_seed(cfg.seed + 3)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=cfg.vocab_size,
            d_model=cfg.text_hidden,
            d_kv=8,
            d_ff=cfg.text_hidden * 2,
            num_layers=cfg.t5_layers,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()  # as from_pretrained leaves them: T5's dropout off
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
