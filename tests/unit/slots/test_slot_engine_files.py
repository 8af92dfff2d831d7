"""Prepared adapter files: disk -> slot in one read, refused for another layout; switching does not leak."""

from __future__ import annotations

import copy
import gc
import os

import psutil
import pytest
import torch

from inference_pod.adapters.formats import canonicalize
from inference_pod.slots.engine import AdapterMismatchError, SlotEngine
from inference_pod.slots.files import layout_fingerprint, load_prepared_file, read_prepared, save_prepared
from tests.unit.slots.slot_engine_helpers import make_adapter, unet_inputs, unet_out


@pytest.fixture(scope="module")
def engine_pipe(tiny_pipe):
    pipe = copy.deepcopy(tiny_pipe)
    engine = SlotEngine(pipe, n_slots=3, max_rank=16)
    yield engine, pipe
    engine.uninstall()


def test_prepared_file_round_trip(engine_pipe, tmp_path):
    engine, pipe = engine_pipe
    prepared = engine.prepare(canonicalize(make_adapter(pipe, rank=6, seed=81), pipe.unet.config))
    path = save_prepared(engine, prepared, tmp_path / "a.slot.safetensors")
    assert path.stat().st_size < prepared.nbytes + 1024
    engine.load(0, prepared)
    engine.activate([(0, 1.0)])
    inputs = unet_inputs(pipe)
    want = unet_out(pipe, inputs)

    engine.load(1, engine.prepare(canonicalize(make_adapter(pipe, rank=16, seed=82), pipe.unet.config)))
    assert load_prepared_file(engine, 1, path) == 6  # rank 6 over rank 16: stale rows cleared
    assert engine.slot_rank[1] == 6 and not engine.storage[1, 6:].any()
    engine.activate([(1, 1.0)])
    assert torch.equal(unet_out(pipe, inputs), want)
    again = read_prepared(engine, path)
    assert again.rank == 6 and torch.equal(again.flat, prepared.flat)
    engine.activate([])


def test_prepared_file_for_another_layout_is_refused(engine_pipe, tiny_pipe, tmp_path):
    engine, pipe = engine_pipe
    prepared = engine.prepare(canonicalize(make_adapter(pipe, rank=2), pipe.unet.config))
    path = save_prepared(engine, prepared, tmp_path / "a.slot.safetensors")
    other_pipe = copy.deepcopy(tiny_pipe)
    other = SlotEngine(other_pipe, n_slots=1, max_rank=16, target_suffixes=("to_q", "to_v"))
    assert layout_fingerprint(other) != layout_fingerprint(engine)
    with pytest.raises(AdapterMismatchError, match="another slot layout"):
        load_prepared_file(other, 0, path)
    other.uninstall()


def test_thousand_switches_leave_memory_flat(engine_pipe):
    engine, pipe = engine_pipe
    cfg = pipe.unet.config
    prepared = [engine.prepare(canonicalize(make_adapter(pipe, rank=r, seed=90 + r), cfg)) for r in (4, 16, 8)]
    inputs = unet_inputs(pipe)
    proc = psutil.Process(os.getpid())

    def switch(i):
        slot = i % engine.n_slots
        engine.load(slot, prepared[i % len(prepared)])
        engine.activate([(slot, 1.0)] if i % 3 else [(slot, 0.5), ((slot + 1) % engine.n_slots, 1.0)])

    for i in range(200):
        switch(i)
    unet_out(pipe, inputs)
    gc.collect()
    before = proc.memory_info().rss
    for i in range(1000):
        switch(i)
    unet_out(pipe, inputs)
    gc.collect()
    grown = proc.memory_info().rss - before
    print(f"RSS after 1,000 switches: {grown / 1e6:+.2f} MB (slot {engine.slot_nbytes / 1e6:.2f} MB)")
    assert grown < 8e6
    engine.activate([])


def test_huge_page_buffers_are_zeroed_and_freed():
    from inference_pod.slots import host_memory

    proc = psutil.Process(os.getpid())
    t = host_memory.zeros((16, 1 << 20), torch.bfloat16)  # 32 MB
    assert t.shape == (16, 1 << 20) and t.dtype == torch.bfloat16 and not t.any()
    del t
    gc.collect()
    before = proc.memory_info().rss
    for _ in range(20):
        t = host_memory.zeros((16, 1 << 20), torch.bfloat16)
        t.fill_(1.0)  # touch every page
        del t
    gc.collect()
    assert proc.memory_info().rss - before < 40e6
