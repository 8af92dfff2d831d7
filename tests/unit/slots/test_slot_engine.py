"""The slot engine against diffusers' own LoRA application, on the tiny pipeline.

One pipeline carries the engine, a copy of it gets the same adapters through
load_lora_weights + set_adapters; their UNet (and text encoder) outputs
must agree within fp32 tolerance.
"""

from __future__ import annotations

import copy

import pytest
import torch

from inference_pod.adapters.formats import canonicalize
from inference_pod.slots.batching import activate_per_sample
from inference_pod.slots.engine import AdapterMismatchError, SlotEngine, SlotLoraLinear
from tests.unit.slots.slot_engine_helpers import TE_TARGETS, make_adapter, slice_inputs, unet_inputs, unet_out

TOL = {"atol": 2e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def pristine(tiny_pipe):
    return copy.deepcopy(tiny_pipe)


@pytest.fixture(scope="module")
def inputs(pristine):
    return unet_inputs(pristine, batch=2)


@pytest.fixture()
def ref(pristine):
    """diffusers' side: a pipeline copy whose LoRA layers are removed after each test."""
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
        engines.append(SlotEngine(pipe, **kw))
        return engines[-1], pipe

    yield make
    for e in engines:
        e.uninstall()


def _load(engine, pipe, slot, sd):
    lora = canonicalize(dict(sd), pipe.unet.config)
    engine.load(slot, engine.prepare(lora))
    return lora


CASES = [  # format, rank, alpha, mixed per-module ranks
    ("peft", 8, None, False),
    ("peft", 3, None, False),  # rank < max_rank: zero padded
    ("kohya", 4, 4.0, False),
    ("kohya", 6, 2.5, True),  # alpha != rank, per-module ranks 5 and 6
    ("sgm", 8, 16.0, False),
    ("kohya", 1, 3.0, False),
]


@pytest.mark.parametrize("fmt,rank,alpha,mixed", CASES)
def test_single_adapter_matches_diffusers(engine_factory, ref, pristine, inputs, fmt, rank, alpha, mixed):
    sd = make_adapter(ref, rank=rank, seed=rank, fmt=fmt, alpha=alpha, mixed_ranks=mixed)
    engine, pipe = engine_factory()
    _load(engine, pipe, 1, sd)
    engine.activate([(1, 0.8)])
    ref.load_lora_weights(dict(sd), adapter_name="a")
    ref.set_adapters(["a"], [0.8])
    got, want = unet_out(pipe, inputs), unet_out(ref, inputs)
    assert (want - unet_out(pristine, inputs)).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, want, **TOL)


def test_lora_changes_the_output_and_off_is_bit_exact(engine_factory, pristine, inputs):
    engine, pipe = engine_factory()
    base = unet_out(pristine, inputs)
    assert torch.equal(unet_out(pipe, inputs), base)  # installed, nothing active
    _load(engine, pipe, 0, make_adapter(pristine, rank=4, seed=1))
    engine.activate([(0, 1.0)])
    assert (unet_out(pipe, inputs) - base).abs().max() > 1e-3
    engine.activate([])
    assert torch.equal(unet_out(pipe, inputs), base)
    engine.activate([(0, 0.0)])
    torch.testing.assert_close(unet_out(pipe, inputs), base, **TOL)


def test_two_adapters_with_their_own_scales(engine_factory, ref, inputs):
    a = make_adapter(ref, rank=4, seed=11)
    b = make_adapter(ref, rank=8, seed=12, fmt="kohya", alpha=4.0)
    engine, pipe = engine_factory()
    _load(engine, pipe, 2, a)
    _load(engine, pipe, 0, b)
    engine.activate([(2, 0.6), (0, 1.3)])
    ref.load_lora_weights(dict(a), adapter_name="a")
    ref.load_lora_weights(dict(b), adapter_name="b")
    ref.set_adapters(["a", "b"], [0.6, 1.3])
    torch.testing.assert_close(unet_out(pipe, inputs), unet_out(ref, inputs), **TOL)
    # and back to each one alone, as a resident switch
    engine.activate([(0, 1.3)])
    ref.set_adapters(["b"], [1.3])
    torch.testing.assert_close(unet_out(pipe, inputs), unet_out(ref, inputs), **TOL)


def test_switching_between_resident_adapters(engine_factory, pristine, inputs):
    engine, pipe = engine_factory()
    sds = [make_adapter(pristine, rank=r, seed=20 + r) for r in (2, 8, 5)]
    for slot, sd in enumerate(sds):
        _load(engine, pipe, slot, sd)
    outs = []
    for slot in range(3):
        engine.activate([(slot, 1.0)])
        outs.append(unet_out(pipe, inputs))
    for slot in (2, 0, 1, 0):
        engine.activate([(slot, 1.0)])
        assert torch.equal(unet_out(pipe, inputs), outs[slot])


def test_smaller_adapter_replacing_a_bigger_one_leaves_nothing_behind(engine_factory, pristine, inputs):
    engine, pipe = engine_factory()
    small = make_adapter(pristine, rank=2, seed=31)
    _load(engine, pipe, 0, small)
    engine.activate([(0, 1.0)])
    fresh = unet_out(pipe, inputs)
    _load(engine, pipe, 1, make_adapter(pristine, rank=8, seed=32))
    _load(engine, pipe, 1, small)  # rank 2 over rank 8: rows 2..7 must be zeroed
    assert engine.slot_rank[1] == 2 and not engine.storage[1, 2:].any()
    engine.activate([(1, 1.0)])
    assert torch.equal(unet_out(pipe, inputs), fresh)
    engine.activate([(1, 1.0), (0, 0.0)])  # the gathered path reads all rows of both
    torch.testing.assert_close(unet_out(pipe, inputs), fresh, **TOL)
    engine.clear(1)
    engine.activate([(1, 1.0)])
    assert torch.equal(unet_out(pipe, inputs), unet_out(pristine, inputs))


def test_prepared_adapter_is_compact(engine_factory, pristine):
    engine, pipe = engine_factory(max_rank=64)
    prepared = engine.prepare(canonicalize(make_adapter(pristine, rank=8), pipe.unet.config))
    assert prepared.rank == 8 and prepared.flat.is_contiguous()
    assert prepared.nbytes == 8 * engine.width * 4 == engine.slot_nbytes // 8


def test_per_sample_adapters_match_one_by_one(engine_factory, pristine):
    engine, pipe = engine_factory(max_active=2)
    _load(engine, pipe, 0, make_adapter(pristine, rank=4, seed=41))
    _load(engine, pipe, 1, make_adapter(pristine, rank=8, seed=42, fmt="kohya", alpha=2.0))
    _load(engine, pipe, 2, make_adapter(pristine, rank=2, seed=43))
    samples = [[(0, 1.0)], [(1, 0.5), (2, 1.5)], [], [(2, 0.7)]]
    n = len(samples)
    # Classifier-free guidance layout: [uncond..., cond...], the adapters repeat.
    inputs = unet_inputs(pristine, batch=2 * n, seed=5)
    activate_per_sample(engine, samples)
    batched = unet_out(pipe, inputs)
    for i, sample in enumerate(samples):
        engine.activate(sample)
        one = unet_out(pipe, slice_inputs(inputs, [i, n + i]))
        torch.testing.assert_close(batched[[i, n + i]], one, **TOL)
    activate_per_sample(engine, samples)
    with pytest.raises(RuntimeError, match="per-sample adapters were set for 4 samples"):
        unet_out(pipe, unet_inputs(pristine, batch=3))
    engine.activate([])


def test_text_encoder_lora_matches_diffusers(engine_factory, ref, inputs):
    sd = make_adapter(ref, rank=4, seed=51, fmt="kohya", alpha=8.0, text_encoders=True)
    engine, pipe = engine_factory(
        components=("unet", "text_encoder", "text_encoder_2"),
        target_suffixes=("to_q", "to_k", "to_v", "to_out.0", *TE_TARGETS),
    )
    lora = _load(engine, pipe, 0, sd)
    assert lora.components() == {"unet", "text_encoder", "text_encoder_2"}
    engine.activate([(0, 0.9)])
    ref.load_lora_weights(dict(sd), adapter_name="te")
    ref.set_adapters(["te"], [0.9])
    with torch.inference_mode():
        got = pipe.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=False)
        want = ref.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=False)
        base = copy.deepcopy(ref)
        base.disable_lora()
        plain = base.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=False)
    for g, w, p in zip(got, want, plain, strict=True):
        if g is None:
            continue
        assert (w - p).abs().max() > 1e-4  # the text encoder LoRA does something
        torch.testing.assert_close(g, w, **TOL)
    torch.testing.assert_close(unet_out(pipe, inputs), unet_out(ref, inputs), **TOL)


def test_text_encoder_lora_refused_when_the_pool_does_not_enable_it(engine_factory, pristine):
    engine, pipe = engine_factory()
    lora = canonicalize(make_adapter(pristine, text_encoders=True), pipe.unet.config)
    with pytest.raises(AdapterMismatchError, match="text_encoder.*--text-encoder-lora"):
        engine.check(lora)
    with pytest.raises(AdapterMismatchError):
        engine.prepare(lora)


def test_refusals(engine_factory, pristine):
    engine, pipe = engine_factory(max_rank=4, max_active=2)
    cfg = pipe.unet.config
    with pytest.raises(AdapterMismatchError, match="rank 8 exceeds the pool's max rank 4"):
        engine.prepare(canonicalize(make_adapter(pristine, rank=8), cfg))
    sd = make_adapter(pristine, rank=2)
    key = next(k for k in sd if k.endswith("attn2.to_k.lora_A.weight"))
    sd[key] = torch.zeros(2, 7)
    with pytest.raises(AdapterMismatchError, match=r"attn2.to_k: the adapter maps 7 -> \d+ features") as e:
        engine.prepare(canonicalize(sd, cfg))
    assert "(7,)" not in str(e.value) and ")x(" not in str(e.value)  # was "shape (640,)x(7,)"
    sd = make_adapter(pristine, rank=2)
    sd[next(iter(sd))][0, 0] = float("nan")
    with pytest.raises(AdapterMismatchError, match="NaN"):
        engine.prepare(canonicalize(sd, cfg))
    with pytest.raises(AdapterMismatchError, match="at most 2 adapters"):
        engine.activate([(0, 1.0), (1, 1.0), (2, 1.0)])
    with pytest.raises(AdapterMismatchError, match="slot 7 does not exist"):
        engine.activate([(7, 1.0)])
    engine.activate([(2, 0.5), (1, 1.0)])
    before = (engine.state.index.clone(), engine.state.rows_full.clone())
    with pytest.raises(AdapterMismatchError, match="slot 9 does not exist"):
        engine.activate([(0, 1.0), (9, 1.0)])
    assert torch.equal(engine.state.index, before[0]) and torch.equal(engine.state.rows_full, before[1])


def test_install_and_uninstall(pristine):
    pipe = copy.deepcopy(pristine)
    engine = SlotEngine(pipe, n_slots=1, max_rank=4)
    wrapped = [m for m in pipe.unet.modules() if isinstance(m, SlotLoraLinear)]
    assert len(wrapped) == len(engine.layouts) == 96
    assert set(pipe.unet.state_dict()) == set(pristine.unet.state_dict())
    with pytest.raises(ValueError, match="already has slot LoRA layers"):
        SlotEngine(pipe, n_slots=1, max_rank=4)
    engine.uninstall()
    assert not any(isinstance(m, SlotLoraLinear) for m in pipe.unet.modules())


@pytest.mark.parametrize("compute_dtype", [None, torch.float32])
def test_bf16_model_as_accurate_as_diffusers(pristine, inputs, compute_dtype):
    """bf16 slots, with the update in bf16 or in fp32 (what "auto" picks on CPUs without bf16 kernels)."""
    a = make_adapter(pristine, rank=8, seed=101)
    b = make_adapter(pristine, rank=4, seed=102, fmt="kohya", alpha=2.0)
    exact = copy.deepcopy(pristine)
    exact.load_lora_weights(dict(a), adapter_name="a")
    exact.load_lora_weights(dict(b), adapter_name="b")
    low = copy.deepcopy(exact).to(torch.bfloat16)
    low_inputs = {
        k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()
    }
    low_inputs["added_cond_kwargs"] = {k: v.to(torch.bfloat16) for k, v in inputs["added_cond_kwargs"].items()}
    pipe = copy.deepcopy(pristine).to(torch.bfloat16)
    engine = SlotEngine(pipe, n_slots=2, max_rank=8, compute_dtype=compute_dtype)
    assert engine.compute_dtype == compute_dtype and engine.storage.dtype == torch.bfloat16
    _load(engine, pipe, 0, a)
    _load(engine, pipe, 1, b)
    for active, names, weights in (([(0, 0.9)], ["a"], [0.9]), ([(1, 1.1), (0, 0.4)], ["b", "a"], [1.1, 0.4])):
        engine.activate(active)
        exact.set_adapters(names, weights)
        low.set_adapters(names, weights)
        truth = unet_out(exact, inputs)
        ours = (unet_out(pipe, low_inputs).float() - truth).abs().mean()
        theirs = (unet_out(low, low_inputs).float() - truth).abs().mean()
        assert ours <= theirs * 1.25 + 1e-4, (ours, theirs)
    engine.uninstall()


def test_loading_into_the_active_slot_takes_effect(engine_factory, pristine, inputs):
    engine, pipe = engine_factory()
    small, big = make_adapter(pristine, rank=2, seed=111), make_adapter(pristine, rank=8, seed=112)
    _load(engine, pipe, 0, big)
    engine.activate([(0, 1.0)])
    want_big = unet_out(pipe, inputs)
    _load(engine, pipe, 0, small)  # no activate() in between: the layers must read 2 rows now
    want_small = unet_out(pipe, inputs)
    _load(engine, pipe, 0, big)  # and 8 rows again
    assert torch.equal(unet_out(pipe, inputs), want_big)
    engine.activate([])
    _load(engine, pipe, 1, small)
    engine.activate([(1, 1.0)])
    assert torch.equal(unet_out(pipe, inputs), want_small)
