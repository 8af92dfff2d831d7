"""The adapter tiers on the tiny pipeline: fall-through, LRU eviction, pinning, bad-adapter memory."""

import copy
import os
import time

import pytest
import torch

from inference_pod.adapters.sources import SourcePolicy
from inference_pod.adapters.tiers import AdapterError, AdapterTiers, TierBudgets, cold_tier
from inference_pod.local.lora_factory import write_lora
from inference_pod.slots.engine import SlotEngine
from inference_pod.worker.tiny_model import TinyConfig, build_tiny_pipeline
from loraplex.api.routing_table import AdapterEntry


@pytest.fixture()
def pipe(tiny_pipe):
    return copy.deepcopy(tiny_pipe)


def make_tiers(pipe, tmp_path, slots=2, max_rank=8, ram_adapters=3):
    engine = SlotEngine(pipe, n_slots=slots, max_rank=max_rank)
    budgets = TierBudgets(gpu_slots=slots, ram_bytes=ram_adapters * engine.slot_nbytes, disk_bytes=1 << 30)
    policy = SourcePolicy(path_roots=(tmp_path,))
    return AdapterTiers(engine, budgets, tmp_path / "disk", unet_config=pipe.unet.config, policy=policy)


def register(tiers, tmp_path, unet, name, pinned=False, **kw):
    path = write_lora(tmp_path / "src" / f"{name}.safetensors", unet, **kw)
    tiers.register(
        name,
        AdapterEntry.model_validate({"pool": "p", "source": {"type": "path", "path": str(path)}, "pinned": pinned}),
    )
    return path


@pytest.mark.parametrize(
    ("in_job", "fetched", "want"),
    [
        ("ram", "source", "source"),  # fetched beside the GPU for this request: the job found it in RAM
        ("ram", "disk", "disk"),
        ("ram", "ram", "ram"),
        ("gpu", "ram", "gpu"),  # already resident when the job ran: no copy at all
        ("ram", None, "ram"),
        ("disk", "source", "source"),
        ("source", "disk", "source"),  # evicted after the fetch and taken again inside the job
        ("gpu", "source", "source"),  # the request still waited for the source
    ],
)
def test_cold_tier(in_job, fetched, want):
    assert cold_tier(in_job, fetched) == want


def test_tiers_fall_through_then_hit(pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path)
    register(tiers, tmp_path, pipe.unet, "a", seed=1)
    assert tiers.tier_of("a") == "disk"
    first = tiers.ensure_in_slot("a")
    assert first.tier == "disk"
    assert tiers.tier_of("a") == "gpu"
    assert tiers.ensure_in_slot("a").tier == "gpu"
    tiers.close()


def test_slot_lru_eviction_keeps_pinned_and_in_use(pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path, slots=2, ram_adapters=4)
    register(tiers, tmp_path, pipe.unet, "pinned", pinned=True, seed=1)
    for i, n in enumerate("abc"):
        register(tiers, tmp_path, pipe.unet, n, seed=10 + i)
    tiers.ensure_in_slot("pinned")
    tiers.ensure_in_slot("a")
    tiers.ensure_in_slot("b")  # evicts a, never the pinned one
    assert tiers.tier_of("pinned") == "gpu" and tiers.tier_of("a") == "ram" and tiers.tier_of("b") == "gpu"
    assert tiers.ensure_in_slot("a").tier == "ram"  # RAM -> slot, no file read
    with pytest.raises(AdapterError) as e:
        # both slots are busy: one pinned, one used by the same request
        tiers.ensure_in_slot("c", keep=frozenset({"a", "c"}))
    assert e.value.status == 503
    tiers.close()


def test_ram_budget_evicts_lru(pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path, slots=1)
    for i, n in enumerate("abc"):
        register(tiers, tmp_path, pipe.unet, n, seed=i)
    tiers.prefetch("a").result()
    tiers.ram.budget = 2 * tiers.ram.used  # room for two adapters of this size
    for n in "bc":
        tiers.prefetch(n).result()
    assert len(tiers.ram) == 2 and "a" not in tiers.ram
    assert tiers.tier_of("a") == "disk"
    tiers.close()


def test_bad_adapters_are_remembered_until_the_source_changes(pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path, max_rank=4)
    path = register(tiers, tmp_path, pipe.unet, "big", rank=8, seed=3)
    with pytest.raises(AdapterError, match="rank 8 exceeds the pool's max rank 4") as e:
        tiers.ensure_in_slot("big")
    assert e.value.status == 422
    assert any(d["bad"] for d in tiers.describe())
    with pytest.raises(AdapterError, match="rank 8"):
        tiers.prefetch("big").result()  # fails fast from memory
    time.sleep(0.01)
    write_lora(path, pipe.unet, rank=4, seed=3)  # fixed at the source
    os.utime(path)
    assert tiers.ensure_in_slot("big").tier == "disk"
    tiers.close()


def test_adapter_for_another_base_model_is_refused(pipe, tmp_path):
    other = build_tiny_pipeline(TinyConfig(text_hidden=48))  # different cross-attention width
    tiers = make_tiers(pipe, tmp_path)
    register(tiers, tmp_path, other.unet, "foreign", seed=4)
    with pytest.raises(AdapterError, match="another base model") as e:
        tiers.ensure_in_slot("foreign")
    assert e.value.status == 422
    tiers.close()


def test_corrupt_file_and_unknown_adapter(pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path)
    bad = tmp_path / "src" / "corrupt.safetensors"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    tiers.register("corrupt", AdapterEntry.model_validate({"pool": "p", "source": {"type": "path", "path": str(bad)}}))
    with pytest.raises(AdapterError, match="corrupt") as e:
        tiers.ensure_in_slot("corrupt")
    assert e.value.status == 422
    with pytest.raises(AdapterError) as e:
        tiers.ensure_in_slot("never-registered")
    assert e.value.status == 404
    tiers.close()


def test_loaded_adapter_changes_the_unet_output(pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path)
    register(tiers, tmp_path, pipe.unet, "a", seed=1, strength=2.0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ehs = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(1))
    cond = {"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)}

    def out():
        with torch.no_grad():
            return pipe.unet(x, 10, encoder_hidden_states=ehs, added_cond_kwargs=cond).sample

    base = out()
    swap = tiers.ensure_in_slot("a")
    tiers.engine.activate([(swap.slot, 1.0)])
    with_a = out()
    tiers.engine.activate([])
    assert not torch.allclose(base, with_a)
    assert torch.equal(out(), base)
    tiers.close()


def test_restart_reads_the_prepared_copy_without_converting(pipe, tiny_pipe, tmp_path, monkeypatch):
    tiers = make_tiers(pipe, tmp_path)
    register(tiers, tmp_path, pipe.unet, "a", seed=1)
    first = tiers.ensure_in_slot("a")
    want = tiers.ram.get("a").flat.clone()
    assert list((tmp_path / "disk").glob("*.slot.safetensors"))
    tiers.close()

    import inference_pod.adapters.tiers as tiers_mod

    def no_conversion(*args, **kwargs):
        raise AssertionError("the original file was converted again")

    monkeypatch.setattr(tiers_mod, "load_adapter_file", no_conversion)
    again = make_tiers(copy.deepcopy(tiny_pipe), tmp_path)  # a new worker over the same disk tier
    again.register("a", tiers.catalog["a"])  # the same, unchanged source file
    swap = again.ensure_in_slot("a")
    assert (first.tier, swap.tier) == ("disk", "disk")
    assert torch.equal(again.ram.get("a").flat, want)
    again.close()


def test_damaged_prepared_copy_is_rebuilt(pipe, tiny_pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path)
    register(tiers, tmp_path, pipe.unet, "a", seed=1)
    tiers.ensure_in_slot("a")
    want = tiers.ram.get("a").flat.clone()
    tiers.close()
    for f in (tmp_path / "disk").glob("*.slot.safetensors"):
        f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    again = make_tiers(copy.deepcopy(tiny_pipe), tmp_path)
    again.register("a", tiers.catalog["a"])
    assert again.ensure_in_slot("a").tier == "disk"
    assert torch.equal(again.ram.get("a").flat, want)
    again.close()


def test_resident_reports_each_adapter_at_its_highest_tier_bounded(pipe, tmp_path):
    tiers = make_tiers(pipe, tmp_path, slots=1)
    for i, n in enumerate("abcd"):
        register(tiers, tmp_path, pipe.unet, n, seed=i)
    assert tiers.resident(10) == {
        "gpu": [],
        "ram": [],
        "disk": [],
        "counts": {"gpu": 0, "ram": 0, "disk": 0},
        "truncated": False,
    }
    tiers.ensure_in_slot("a")
    tiers.ram.budget = tiers.ram.used  # room for one adapter of this size
    tiers.prefetch("b").result()  # a leaves RAM, stays in its slot
    tiers.prefetch("c").result()  # b leaves RAM for c, keeps its prepared copy on disk
    got = tiers.resident(10)
    assert (got["gpu"], got["ram"], got["disk"]) == (["a"], ["c"], ["b"])
    assert got["counts"] == {"gpu": 1, "ram": 1, "disk": 1} and not got["truncated"]
    cut = tiers.resident(2)
    assert (cut["gpu"], cut["ram"], cut["disk"]) == (["a"], ["c"], []) and cut["truncated"]
    assert cut["counts"] == got["counts"]
    tiers.close()
