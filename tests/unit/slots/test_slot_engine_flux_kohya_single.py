"""kohya/BFL FLUX LoRAs on the single blocks' fused `linear1` (q, k, v and the MLP input) and `linear2`.

diffusers' kohya converter splits `linear1` at FLUX.1's fixed sizes (3,072 x 3 + 12,288), so this test builds
tiny-flux with one single block at FLUX.1's real width (24 heads x 128) and no joint block: the file converts
through diffusers' own converter, and the served image must match `FluxPipeline.load_lora_weights`' image.
"""

from __future__ import annotations

import copy

import pytest
import torch

from inference_pod.local.lora_factory import make_flux_lora_state_dict
from inference_pod.slots.engine import SlotEngine
from inference_pod.slots.targets import FLUX_TARGETS
from inference_pod.worker.tiny_flux import TinyFluxConfig, build_tiny_flux_pipeline
from tests.unit.slots.flux_helpers import flux_lora

pytestmark = pytest.mark.slow

WIDE = TinyFluxConfig(num_layers=0, num_single_layers=1, heads=24, head_dim=128, axes_dims_rope=(16, 56, 56))
BLOCK = "transformer.single_transformer_blocks.0."


@pytest.fixture(scope="module")
def pristine():
    return build_tiny_flux_pipeline(WIDE)


def image(pipe) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    kw = {"num_inference_steps": 2, "width": 32, "height": 32, "max_sequence_length": 16}
    return torch.from_numpy(pipe("a red fox", generator=g, output_type="np", **kw).images)


def test_kohya_linear1_and_linear2_served_like_diffusers(pristine):
    sd = make_flux_lora_state_dict(pristine.transformer, rank=4, seed=5, fmt="kohya", alpha=2.0, strength=4.0)
    assert {"lora_unet_single_blocks_0_linear1.lora_down.weight", "lora_unet_single_blocks_0_linear2.alpha"} <= set(sd)
    lora = flux_lora(sd)
    for mod in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear"):
        assert BLOCK + mod in lora.modules, mod
    # linear1's down factor is shared by its four parts; its up factor is split at 3,072 x 3 + 12,288 rows.
    q, mlp = lora.modules[BLOCK + "attn.to_q"], lora.modules[BLOCK + "proj_mlp"]
    assert torch.equal(q.down, mlp.down) and q.up.shape[0] == 3072 and mlp.up.shape[0] == 12288
    pipe = copy.deepcopy(pristine)
    engine = SlotEngine(pipe, n_slots=2, max_rank=8, target_suffixes=FLUX_TARGETS, components=("transformer",))
    ref = copy.deepcopy(pristine)
    try:
        engine.load(1, engine.prepare(lora))
        engine.activate([(1, 0.9)])
        ref.load_lora_weights({k: v.clone() for k, v in sd.items()}, adapter_name="a")
        ref.set_adapters(["a"], [0.9])
        assert ref.transformer.single_transformer_blocks[0].attn.to_q.lora_A["a"].weight.shape == (4, 3072)
        want = image(ref)
        assert (want - image(pristine)).abs().max() > 1e-3  # the adapter changes the image
        torch.testing.assert_close(image(pipe), want, atol=1e-4, rtol=0)
    finally:
        engine.uninstall()
        del ref
