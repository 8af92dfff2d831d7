"""The slot engine on FLUX transformer linears against diffusers' own LoRA application, on `tiny-flux`.

One pipeline carries the engine, a copy gets the same adapters through `FluxPipeline.load_lora_weights` +
`set_adapters`; transformer outputs (and whole generated images) must agree within fp32 tolerance, for each format,
several ranks, alpha != rank, adapters with different target sets, and two adapters with scales.
"""

from __future__ import annotations

import copy

import pytest
import torch

from inference_pod.adapters.formats import AdapterFormatError, canonicalize
from inference_pod.families import FLUX, SDXL
from inference_pod.slots.engine import AdapterMismatchError, SlotEngine, SlotLoraLinear
from inference_pod.slots.targets import FLUX_ATTENTION_TARGETS, FLUX_MLP_TARGETS, FLUX_NORM_TARGETS, FLUX_TARGETS
from tests.unit.slots.flux_helpers import flux_lora, make_flux_adapter, transformer_inputs, transformer_out
from tests.unit.slots.slot_engine_helpers import make_adapter

TOL = {"atol": 2e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def pristine(tiny_flux_pipe):
    return copy.deepcopy(tiny_flux_pipe)


@pytest.fixture(scope="module")
def inputs(pristine):
    return transformer_inputs(pristine, batch=2)


@pytest.fixture()
def ref(pristine):
    pipe = copy.deepcopy(pristine)
    yield pipe
    pipe.unload_lora_weights()


@pytest.fixture()
def engine_factory(pristine):
    engines = []

    def make(**kw):
        pipe = copy.deepcopy(pristine)
        kw.setdefault("n_slots", 3)
        kw.setdefault("max_rank", 8)
        kw.setdefault("target_suffixes", FLUX_TARGETS)
        kw.setdefault("components", ("transformer",))
        engines.append(SlotEngine(pipe, **kw))
        return engines[-1], pipe

    yield make
    for e in engines:
        e.uninstall()


def _load(engine, slot, sd):
    lora = flux_lora(sd)
    engine.load(slot, engine.prepare(lora))
    return lora


CASES = [  # format, rank, alpha, mixed per-module ranks, targets (peft only)
    ("peft", 8, None, False, FLUX_TARGETS),
    ("peft", 3, None, False, FLUX_TARGETS),  # rank < max_rank: zero padded
    ("peft", 5, None, True, FLUX_ATTENTION_TARGETS),  # per-module ranks 4 and 5, attention only
    ("peft", 4, None, False, FLUX_MLP_TARGETS + FLUX_NORM_TARGETS),
    ("kohya", 4, 4.0, False, None),
    ("kohya", 6, 2.5, True, None),  # alpha != rank, per-layer ranks 5 and 6, fused qkv split by diffusers
    ("kohya", 1, 3.0, False, None),
    ("xlabs", 4, None, False, None),  # joint blocks' attention, fused qkv
    ("xlabs", 2, None, True, None),
]


@pytest.mark.parametrize("fmt,rank,alpha,mixed,targets", CASES)
def test_single_adapter_matches_diffusers(engine_factory, ref, pristine, inputs, fmt, rank, alpha, mixed, targets):
    kw = {"suffixes": targets} if targets else {}
    sd = make_flux_adapter(ref, rank=rank, seed=rank, fmt=fmt, alpha=alpha, mixed_ranks=mixed, **kw)
    engine, pipe = engine_factory()
    lora = _load(engine, 1, sd)
    assert lora.source_format == fmt and lora.rank == rank
    engine.activate([(1, 0.8)])
    ref.load_lora_weights(dict(sd), adapter_name="a")
    ref.set_adapters(["a"], [0.8])
    got, want = transformer_out(pipe, inputs), transformer_out(ref, inputs)
    assert (want - transformer_out(pristine, inputs)).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, want, **TOL)


def test_kohya_layers_map_to_the_joint_and_single_block_linears(pristine):
    lora = flux_lora(make_flux_adapter(pristine, rank=4, fmt="kohya", alpha=2.0))
    names = set(lora.modules)
    for block in ("transformer.transformer_blocks.0.", "transformer.single_transformer_blocks.1."):
        assert any(n.startswith(block) for n in names)
    for mod in ("attn.add_q_proj", "attn.to_add_out", "ff_context.net.2", "norm1_context.linear", "attn.to_v"):
        assert f"transformer.transformer_blocks.0.{mod}" in names
    for mod in ("proj_out", "norm.linear"):
        assert f"transformer.single_transformer_blocks.1.{mod}" in names
    # The fused qkv's down factor is shared by q, k and v; alpha/rank is folded in by diffusers' converter.
    q, k = (lora.modules[f"transformer.transformer_blocks.0.attn.to_{x}"] for x in "qk")
    assert torch.equal(q.down, k.down) and q.alpha is None


def test_two_adapters_with_different_targets_and_scales(engine_factory, ref, inputs):
    attn = make_flux_adapter(ref, rank=4, seed=11, suffixes=FLUX_ATTENTION_TARGETS)
    mlp = make_flux_adapter(ref, rank=8, seed=12, fmt="kohya", alpha=4.0)
    engine, pipe = engine_factory()
    _load(engine, 2, attn)
    _load(engine, 0, mlp)
    engine.activate([(2, 0.6), (0, 1.3)])
    ref.load_lora_weights(dict(attn), adapter_name="a")
    ref.load_lora_weights(dict(mlp), adapter_name="b")
    ref.set_adapters(["a", "b"], [0.6, 1.3])
    torch.testing.assert_close(transformer_out(pipe, inputs), transformer_out(ref, inputs), **TOL)
    engine.activate([(0, 1.3)])  # a resident switch back to one of them
    ref.set_adapters(["b"], [1.3])
    torch.testing.assert_close(transformer_out(pipe, inputs), transformer_out(ref, inputs), **TOL)


def test_generated_image_matches_diffusers(engine_factory, ref, pristine):
    sd = make_flux_adapter(ref, rank=4, seed=21, fmt="kohya", alpha=8.0)
    engine, pipe = engine_factory()
    _load(engine, 0, sd)
    engine.activate([(0, 1.0)])
    ref.load_lora_weights(dict(sd), adapter_name="a")

    def image(p):
        g = torch.Generator().manual_seed(3)
        kw = {"num_inference_steps": 2, "width": 32, "height": 32, "max_sequence_length": 16}
        return p("a red fox", generator=g, output_type="np", **kw).images

    got, want = image(pipe), image(ref)
    assert abs(want - image(pristine)).max() > 1e-3
    assert abs(got - want).max() < 1e-4


def test_off_is_bit_exact_and_switching_is_stable(engine_factory, pristine, inputs):
    engine, pipe = engine_factory()
    base = transformer_out(pristine, inputs)
    assert torch.equal(transformer_out(pipe, inputs), base)
    sds = [make_flux_adapter(pristine, rank=r, seed=20 + r) for r in (2, 8, 5)]
    for slot, sd in enumerate(sds):
        _load(engine, slot, sd)
    outs = []
    for slot in range(3):
        engine.activate([(slot, 1.0)])
        outs.append(transformer_out(pipe, inputs))
        assert (outs[-1] - base).abs().max() > 1e-3
    for slot in (2, 0, 1, 0):
        engine.activate([(slot, 1.0)])
        assert torch.equal(transformer_out(pipe, inputs), outs[slot])
    engine.activate([])
    assert torch.equal(transformer_out(pipe, inputs), base)


def test_layout_keeps_each_target_group_contiguous(engine_factory):
    engine, _ = engine_factory(n_slots=1)
    groups = [
        next(i for i, g in enumerate((FLUX_ATTENTION_TARGETS, FLUX_MLP_TARGETS, FLUX_NORM_TARGETS)) if _ends(n, g))
        for n in engine.layouts
    ]
    assert groups == sorted(groups)
    wrapped = [m for m in engine._pipe.transformer.modules() if isinstance(m, SlotLoraLinear)]
    # tiny-flux: 1 joint block (8 attention, 4 MLP, 2 norm linears), 2 single blocks (3 + 2 + 1), the final proj_out
    assert len(wrapped) == len(engine.layouts) == 14 + 2 * 6 + 1


def _ends(name: str, suffixes: tuple[str, ...]) -> bool:
    return any(name.endswith("." + s) for s in suffixes)


@pytest.mark.parametrize("compute_dtype", [None, torch.float32])
def test_bf16_model_as_accurate_as_diffusers(pristine, inputs, compute_dtype):
    a = make_flux_adapter(pristine, rank=8, seed=101)
    b = make_flux_adapter(pristine, rank=4, seed=102, fmt="kohya", alpha=2.0)
    exact = copy.deepcopy(pristine)
    exact.load_lora_weights(dict(a), adapter_name="a")
    exact.load_lora_weights(dict(b), adapter_name="b")
    low = copy.deepcopy(exact).to(torch.bfloat16)
    low_inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in inputs.items()}
    pipe = copy.deepcopy(pristine).to(torch.bfloat16)
    engine = SlotEngine(
        pipe,
        n_slots=2,
        max_rank=8,
        target_suffixes=FLUX_TARGETS,
        components=("transformer",),
        compute_dtype=compute_dtype,
    )
    assert engine.storage.dtype == torch.bfloat16
    _load(engine, 0, a)
    _load(engine, 1, b)
    for active, names, weights in (([(0, 0.9)], ["a"], [0.9]), ([(1, 1.1), (0, 0.4)], ["b", "a"], [1.1, 0.4])):
        engine.activate(active)
        exact.set_adapters(names, weights)
        low.set_adapters(names, weights)
        truth = transformer_out(exact, inputs)
        ours = (transformer_out(pipe, low_inputs).float() - truth).abs().mean()
        theirs = (transformer_out(low, low_inputs).float() - truth).abs().mean()
        assert ours <= theirs * 1.25 + 1e-4, (ours, theirs)
    engine.uninstall()


def test_adapters_for_the_other_family_are_refused(pristine, tiny_pipe):
    sdxl = make_adapter(tiny_pipe, rank=2)
    with pytest.raises(AdapterFormatError, match=r"this is a SDXL LoRA \(keys like 'unet\..*'\); .* FLUX model"):
        canonicalize(sdxl, family=FLUX)
    kohya_sdxl = make_adapter(tiny_pipe, rank=2, fmt="sgm", alpha=1.0)
    with pytest.raises(AdapterFormatError, match="SDXL LoRA .*lora_unet_input_blocks.* FLUX model"):
        canonicalize(kohya_sdxl, family=FLUX)
    for fmt in ("peft", "kohya"):
        flux = make_flux_adapter(pristine, rank=2, fmt=fmt)
        with pytest.raises(AdapterFormatError, match="this is a FLUX LoRA .* SDXL model"):
            canonicalize(flux, tiny_pipe.unet.config, family=SDXL)


def test_refusals(engine_factory, pristine):
    engine, _ = engine_factory(max_rank=4)
    with pytest.raises(AdapterMismatchError, match="rank 8 exceeds the pool's max rank 4"):
        engine.prepare(flux_lora(make_flux_adapter(pristine, rank=8)))
    sd = make_flux_adapter(pristine, rank=2)
    key = next(k for k in sd if k.endswith("attn.add_k_proj.lora_A.weight"))
    sd[key] = torch.zeros(2, 7)
    with pytest.raises(AdapterMismatchError, match=r"add_k_proj: the adapter maps 7 -> 16 features"):
        engine.prepare(flux_lora(sd))
    sd = make_flux_adapter(pristine, rank=2)
    sd["transformer.transformer_blocks.5.attn.to_q.lora_A.weight"] = torch.zeros(2, 16)
    sd["transformer.transformer_blocks.5.attn.to_q.lora_B.weight"] = torch.zeros(16, 2)
    with pytest.raises(AdapterMismatchError, match="transformer_blocks.5.attn.to_q is not a LoRA target"):
        engine.prepare(flux_lora(sd))
    sd = make_flux_adapter(pristine, rank=2)
    sd["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"] = torch.zeros(2, 16)
    del sd["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"]
    with pytest.raises(AdapterFormatError, match="unpaired"):
        flux_lora(sd)


def test_switching_flux_adapters_does_not_recompile(engine_factory, pristine, inputs):
    from tests.unit.slots.test_slot_engine_compile import CountingBackend

    engine, pipe = engine_factory(n_slots=3, max_active=2)
    sds = [
        make_flux_adapter(pristine, rank=r, seed=60 + r, fmt=f) for r, f in ((4, "peft"), (8, "kohya"), (2, "xlabs"))
    ]
    prepared = [engine.prepare(flux_lora(sd)) for sd in sds]
    engine.load(0, prepared[0])
    engine.load(1, prepared[1])
    requests = [[(0, 1.0)], [(1, 0.7)], [(0, 0.3), (1, 1.0)], [], [(1, 1.0)]]
    want = []
    for active in requests:
        engine.activate(active)
        want.append(transformer_out(pipe, inputs))
    torch._dynamo.reset()
    backend = CountingBackend("eager")
    compiled = torch.compile(pipe.transformer, backend=backend)

    def run():
        with torch.no_grad():
            return compiled(**inputs).sample

    for active in ([(0, 1.0)], [(0, 0.3), (1, 1.0)], []):  # one graph per number of active adapters
        engine.activate(active)
        run()
    warm = backend.compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        for active, expected in zip(requests, want, strict=True):
            engine.activate(active)
            torch.testing.assert_close(run(), expected, atol=1e-5, rtol=1e-5)
        engine.load(1, prepared[2])  # a new adapter after compilation is seen, without recompiling
        engine.activate([(1, 0.9)])
        got = run()
        assert not torch.equal(got, want[1])
    engine.activate([(1, 0.9)])
    torch.testing.assert_close(got, transformer_out(pipe, inputs), atol=1e-5, rtol=1e-5)
    assert backend.compiles == warm
    torch._dynamo.reset()


def test_an_adapter_covering_part_of_the_pool_is_kept_compact(engine_factory, ref, pristine, inputs, tmp_path):
    from inference_pod.slots.files import load_prepared_file, read_prepared, save_prepared

    engine, pipe = engine_factory()
    attn_sd = make_flux_adapter(pristine, rank=4, seed=71, suffixes=FLUX_ATTENTION_TARGETS)
    norm_sd = make_flux_adapter(pristine, rank=4, seed=72, suffixes=FLUX_NORM_TARGETS)
    full_sd = make_flux_adapter(pristine, rank=8, seed=73)
    attn, norm = engine.prepare(flux_lora(attn_sd)), engine.prepare(flux_lora(norm_sd))
    full = engine.prepare(flux_lora(full_sd))
    assert full.spans is None and full.nbytes == 8 * engine.width * 4
    # The layout keeps each group contiguous: the attention-only adapter is one span at the row's start.
    assert attn.spans is not None and len(attn.spans) == 1 and attn.spans[0][0] == 0
    assert attn.nbytes == 4 * (attn.spans[0][1] - attn.spans[0][0]) * 4 < 4 * engine.width * 4 // 2
    assert norm.spans is not None and norm.spans[-1][1] <= engine.width
    # Loaded over a full adapter, nothing of the full one survives in the gaps.
    engine.load(0, full)
    engine.load(0, attn)
    engine.activate([(0, 0.7)])
    ref.load_lora_weights(dict(attn_sd), adapter_name="a")
    ref.set_adapters(["a"], [0.7])
    want = transformer_out(ref, inputs)
    torch.testing.assert_close(transformer_out(pipe, inputs), want, **TOL)
    # Disk tier: saved compact, read back (or straight into a slot) to the same rows.
    path = save_prepared(engine, attn, tmp_path / "attn.slot.safetensors")
    again = read_prepared(engine, path)
    assert again.spans == attn.spans and torch.equal(again.flat, attn.flat)
    assert path.stat().st_size < 4 * engine.width * 4 // 2
    engine.load(1, full)
    assert load_prepared_file(engine, 1, path) == 4
    engine.activate([(1, 0.7)])
    torch.testing.assert_close(transformer_out(pipe, inputs), want, **TOL)
    # Two compact adapters of different groups together.
    engine.load(2, norm)
    engine.activate([(0, 0.7), (2, 1.2)])
    ref.load_lora_weights(dict(norm_sd), adapter_name="n")
    ref.set_adapters(["a", "n"], [0.7, 1.2])
    torch.testing.assert_close(transformer_out(pipe, inputs), transformer_out(ref, inputs), **TOL)


def test_comfyui_names_convert_like_kohya(pristine):
    """ComfyUI saves kohya factors under the BFL module paths (`diffusion_model.double_blocks.0.img_attn.qkv`)."""
    import re

    kohya = make_flux_adapter(pristine, rank=4, seed=81, fmt="kohya", alpha=2.0)

    def comfy(key: str) -> str:
        name, rest = key.split(".", 1)
        name = re.sub(r"^lora_unet_(double_blocks|single_blocks)_(\d+)_", r"\1.\2.", name)
        name = re.sub(r"(img|txt)_(attn|mlp|mod)_", r"\1_\2.", name)
        return f"diffusion_model.{name}.{rest}"

    comfy_sd = {comfy(k): v for k, v in kohya.items()}
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight" in comfy_sd
    got, want = flux_lora(comfy_sd), flux_lora(kohya)
    assert set(got.modules) == set(want.modules)
    for name, pair in want.modules.items():
        assert torch.equal(got.modules[name].down, pair.down) and torch.equal(got.modules[name].up, pair.up)
