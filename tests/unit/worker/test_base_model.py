"""Base model loading: the tiny model, a local diffusers directory, and a hub id without network."""

import pytest
import torch

from inference_pod.worker.pipeline import load_pipeline, pick_device, pick_dtype


def test_device_and_dtype_are_picked_for_the_machine():
    dev = pick_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_local_directory_loads_through_from_pretrained(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    pipe, dev, dtype = load_pipeline(str(tmp_path / "model"), device="cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    a, b = tiny_pipe.unet.state_dict(), pipe.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert pipe.tokenizer("a fox")["input_ids"] == tiny_pipe.tokenizer("a fox")["input_ids"]


def test_hub_id_without_network_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(Exception, match="(?i)stable-diffusion-xl-base|offline|connect|cache"):
        load_pipeline("stabilityai/stable-diffusion-xl-base-1.0", revision="main", device="cpu")
