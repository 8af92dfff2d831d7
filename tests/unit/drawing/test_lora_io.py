"""The shipped LoRAs: the peft and kohya files of a style read back as the same modules and weights."""

from __future__ import annotations

import pytest
import torch

from inference_pod.adapters.formats import load_adapter_file
from inference_pod.drawing.lora_io import peft_to_kohya
from inference_pod.drawing.model import LORA_STYLES, lora_path, model_dir
from inference_pod.drawing.train import SCHEDULES


@pytest.fixture(scope="module")
def unet_config():
    from diffusers import UNet2DConditionModel
    from diffusers.configuration_utils import FrozenDict

    return FrozenDict(UNet2DConditionModel.load_config(str(model_dir() / "unet")))


@pytest.mark.parametrize("style", LORA_STYLES)
def test_both_formats_read_as_the_same_lora(style: str, unet_config) -> None:
    peft = load_adapter_file(lora_path(style, "peft"), unet_config)
    kohya = load_adapter_file(lora_path(style, "kohya"), unet_config)
    assert peft.source_format == "peft" and kohya.source_format == "kohya"
    # The rank the schedule that trained the shipped files gives this style (outline's is larger).
    assert set(peft.modules) == set(kohya.modules) and peft.rank == kohya.rank == SCHEDULES["cpu"].lora_plan(style)[1]
    for path, pair in peft.modules.items():
        other = kohya.modules[path]
        assert torch.equal(pair.down, other.down) and torch.equal(pair.up, other.up)
        assert pair.scale == other.scale == 1.0
    assert all(".to_" in p for p in peft.modules)  # attention projections only


def test_kohya_keys_use_sgm_block_names() -> None:
    sd = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 4),
        "unet.up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_out.0.lora_B.weight": torch.zeros(4, 2),
    }
    out = peft_to_kohya(sd, layers_per_block=2, alpha=2.0)
    assert set(out) == {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_out_0.lora_up.weight",
        "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_out_0.alpha",
    }
    with pytest.raises(ValueError, match="not a peft UNet LoRA key"):
        peft_to_kohya({"text_encoder.x.lora_A.weight": torch.zeros(1, 1)}, 2, 1.0)
