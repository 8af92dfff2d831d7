"""Adapter files in every accepted key format map to the same canonical modules; bad files are refused."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save_file

from inference_pod.adapters.formats import AdapterFormatError, canonicalize, load_adapter_file, read_safetensors
from tests.unit.slots.slot_engine_helpers import make_adapter


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    return tiny_pipe


def _same_weights(a, b):
    assert set(a.modules) == set(b.modules)
    for name, pair in a.modules.items():
        assert torch.equal(pair.down, b.modules[name].down), name
        assert torch.equal(pair.up, b.modules[name].up), name


@pytest.mark.parametrize("fmt", ["kohya", "sgm", "sgm-mixed"])
def test_kohya_namings_match_peft(pipe, fmt):
    cfg = pipe.unet.config
    peft = canonicalize(make_adapter(pipe, rank=4, seed=3, text_encoders=True), cfg)
    kohya = canonicalize(make_adapter(pipe, rank=4, seed=3, fmt=fmt, alpha=2.0, text_encoders=True), cfg)
    assert peft.source_format == "peft" and kohya.source_format == "kohya"
    assert peft.components() == {"unet", "text_encoder", "text_encoder_2"}
    _same_weights(peft, kohya)
    assert all(p.alpha is None and p.scale == 1.0 for p in peft.modules.values())
    assert all(p.alpha == 2.0 and p.scale == 0.5 for p in kohya.modules.values())


def test_sgm_names_land_on_the_right_blocks(pipe):
    lora = canonicalize(make_adapter(pipe, fmt="sgm"), pipe.unet.config)
    # input_blocks.4.1 is the first attention of the second down block with two layers per block.
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in lora.modules
    assert "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k" in lora.modules
    assert "unet.up_blocks.0.attentions.2.transformer_blocks.1.attn1.to_out.0" in lora.modules


def test_mixed_sgm_file_keeps_every_layer(pipe):
    # diffusers alone drops the SGM half of such a file without a word.
    sd = make_adapter(pipe, fmt="sgm-mixed", alpha=4.0)
    assert any("input_blocks" in k for k in sd) and any("down_blocks" in k for k in sd)
    lora = canonicalize(sd, pipe.unet.config)
    assert len(lora.modules) == sum(k.endswith("lora_down.weight") for k in sd)


def test_the_same_layer_under_two_names_is_refused(pipe):
    sgm = make_adapter(pipe, fmt="sgm", alpha=4.0)
    kohya = make_adapter(pipe, fmt="kohya", alpha=4.0)
    dup = {k: v for k, v in kohya.items() if "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in k}
    with pytest.raises(AdapterFormatError, match="appears twice"):
        canonicalize({**sgm, **dup}, pipe.unet.config)


def test_legacy_diffusers_keys(pipe):
    peft = make_adapter(pipe, seed=5)
    legacy = {}
    for key, value in peft.items():
        module, _, which = key.partition(".lora_")
        parent, _, leaf = module.removesuffix(".0").rpartition(".")
        legacy[f"{parent}.processor.{leaf}_lora.{'down' if which.startswith('A') else 'up'}.weight"] = value
    got = canonicalize(legacy, pipe.unet.config)
    assert got.source_format == "diffusers-legacy"
    _same_weights(canonicalize(peft, pipe.unet.config), got)


def test_mixed_ranks_and_rank_property(pipe):
    lora = canonicalize(make_adapter(pipe, rank=5, mixed_ranks=True), pipe.unet.config)
    assert lora.rank == 5
    assert {p.rank for p in lora.modules.values()} == {4, 5}


@pytest.mark.parametrize("marker,why", [("lora_magnitude_vector", "DoRA"), ("hada_w1_a", "LoHa")])
def test_unsupported_adapter_types(pipe, marker, why):
    sd = make_adapter(pipe)
    first = next(iter(sd)).replace("lora_A.weight", marker)
    sd[first] = torch.zeros(4)
    with pytest.raises(AdapterFormatError, match=why):
        canonicalize(sd, pipe.unet.config)


def test_no_lora_keys():
    with pytest.raises(AdapterFormatError, match="no LoRA keys"):
        canonicalize({"model.weight": torch.zeros(2, 2)})


def test_files(pipe, tmp_path):
    good = tmp_path / "a.safetensors"
    save_file(make_adapter(pipe, fmt="sgm", alpha=1.0), str(good))
    assert load_adapter_file(good, pipe.unet.config).source_format == "kohya"

    pickle = tmp_path / "a.bin"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(AdapterFormatError, match="only .safetensors"):
        read_safetensors(pickle)
    disguised = tmp_path / "b.safetensors"
    disguised.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(AdapterFormatError, match="pickle"):
        read_safetensors(disguised)
    truncated = tmp_path / "c.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(AdapterFormatError, match="corrupt"):
        read_safetensors(truncated)
    outside = tmp_path / "d.safetensors"
    header = b'{"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}}'
    outside.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 16)
    with pytest.raises(AdapterFormatError, match="outside the file"):
        read_safetensors(outside)
