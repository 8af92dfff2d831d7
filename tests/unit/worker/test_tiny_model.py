"""The built-in tiny model is real diffusers code, deterministic, and needs no download."""

import torch

from inference_pod.worker.tiny_model import TinyConfig, build_tiny_pipeline, build_tiny_tokenizer


def test_same_config_same_weights_other_seed_other_weights(tiny_pipe):
    again = build_tiny_pipeline()
    other = build_tiny_pipeline(TinyConfig(seed=1))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b, c = (getattr(p, name).state_dict() for p in (tiny_pipe, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a), name
        assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dtype.is_floating_point), name


def test_sdxl_architecture(tiny_pipe):
    from diffusers import StableDiffusionXLPipeline

    assert isinstance(tiny_pipe, StableDiffusionXLPipeline)
    assert tiny_pipe.unet.config.addition_embed_type == "text_time"
    assert tiny_pipe.text_encoder_2.__class__.__name__ == "CLIPTextModelWithProjection"


def test_tokenizer_is_generated_locally_and_round_trips(tmp_path):
    tok = build_tiny_tokenizer(tmp_path)
    ids = tok("a red fox, 42!")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "aredfox,42!"
    assert (tmp_path / "vocab.json").exists()


def test_generation_is_deterministic_per_seed(tiny_pipe):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return tiny_pipe("a fox", num_inference_steps=1, width=32, height=32, generator=g, output_type="np").images

    a, b, c = run(1), run(1), run(2)
    assert (a == b).all()
    assert not (a == c).all()
