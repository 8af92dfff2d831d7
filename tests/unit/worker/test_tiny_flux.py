"""The built-in tiny-flux model is real diffusers FLUX code, deterministic, needs no download, round-trips through a
diffusers directory, and its family is read from the model, not from its name."""

from __future__ import annotations

import json

import pytest
import torch

from inference_pod.families import (
    FLUX,
    SDXL,
    UnknownFamilyError,
    family_of_directory,
    family_of_lora_keys,
    family_of_pipeline,
)
from inference_pod.local.lora_factory import make_flux_lora_state_dict, make_lora_state_dict
from inference_pod.worker.pipeline import load_pipeline
from inference_pod.worker.tiny_flux import TinyFluxConfig, build_tiny_flux_pipeline, build_tiny_t5_tokenizer


def _image(pipe, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    kw = {"num_inference_steps": 1, "width": 32, "height": 32, "max_sequence_length": 16}
    return pipe("a fox", generator=g, output_type="np", **kw).images


def test_flux_architecture(tiny_flux_pipe):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    assert isinstance(tiny_flux_pipe, FluxPipeline)
    assert isinstance(tiny_flux_pipe.transformer, FluxTransformer2DModel)
    assert len(tiny_flux_pipe.transformer.transformer_blocks) == 1
    assert len(tiny_flux_pipe.transformer.single_transformer_blocks) == 2
    assert tiny_flux_pipe.transformer.config.guidance_embeds  # FLUX.1-dev's shape
    assert type(tiny_flux_pipe.text_encoder_2).__name__ == "T5EncoderModel"
    assert family_of_pipeline(tiny_flux_pipe) == FLUX


def test_same_config_same_weights_other_seed_other_weights(tiny_flux_pipe):
    again = build_tiny_flux_pipeline()
    other = build_tiny_flux_pipeline(TinyFluxConfig(seed=1))
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        a, b, c = (getattr(p, name).state_dict() for p in (tiny_flux_pipe, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dtype.is_floating_point), name
    assert (_image(tiny_flux_pipe) == _image(again)).all()
    assert not (_image(tiny_flux_pipe) == _image(tiny_flux_pipe, seed=2)).all()


def test_t5_tokenizer_is_generated_locally():
    tok = build_tiny_t5_tokenizer()
    ids = tok("a red fox, 42!")["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "a red fox, 42!"


def test_saved_directory_loads_with_its_family_read_from_the_config(tiny_flux_pipe, tmp_path):
    model = tmp_path / "some-model"  # a name that says nothing
    tiny_flux_pipe.save_pretrained(model)
    assert family_of_directory(model) == FLUX
    pipe, _, _ = load_pipeline(str(model), device="cpu")
    assert family_of_pipeline(pipe) == FLUX
    assert (_image(pipe) == _image(tiny_flux_pipe)).all()  # T5's dropout is off in both
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = "SomethingElse"  # the denoiser entry decides
    (model / "model_index.json").write_text(json.dumps(index))
    assert family_of_directory(model) == FLUX
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UnknownFamilyError, match="names no SDXL UNet or FLUX transformer"):
        family_of_directory(model)


def test_built_in_names_load(tiny_pipe):
    pipe, _, _ = load_pipeline("tiny-flux", device="cpu")
    assert family_of_pipeline(pipe) == FLUX
    assert family_of_pipeline(tiny_pipe) == SDXL
    with pytest.raises(UnknownFamilyError, match="not a supported pipeline"):
        family_of_pipeline(object())


def test_lora_family_from_keys(tiny_flux_pipe, tiny_pipe):
    for fmt in ("peft", "kohya", "xlabs"):
        assert family_of_lora_keys(make_flux_lora_state_dict(tiny_flux_pipe.transformer, fmt=fmt)) == FLUX
    for fmt in ("peft", "kohya", "sgm"):
        alpha = None if fmt == "peft" else 2.0
        assert family_of_lora_keys(make_lora_state_dict(tiny_pipe.unet, fmt=fmt, alpha=alpha)) == SDXL
    assert family_of_lora_keys(["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"]) is None
    assert family_of_lora_keys(["diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight"]) == FLUX


def test_worker_refuses_a_model_of_another_family_than_declared(tmp_path):
    from inference_pod.worker.config import config_from_args
    from inference_pod.worker.server import Worker

    args = ["--model", "tiny-flux", "--family", "sdxl", "--no-warmup", "--disk-cache-dir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"tiny-flux is a FLUX model \(FluxPipeline\); the pool declares SDXL"):
        Worker(config_from_args(args)).load()
    worker = Worker(config_from_args([*args[:3], "flux", *args[4:]]))
    worker.load()
    assert worker.family == FLUX and worker.native_size == 64
    assert worker.engine is not None and worker.engine.components == ("transformer",)
