"""Adapter switching: the slot engine beside diffusers' LoRA paths on a full-size SDXL UNet.

    python benchmarks/adapter_switch.py [--device cpu|cuda] [--dtype bfloat16|float16|float32]
                                        [--reps 7] [--forward-reps 2] [--skip-forward] [--quick]

Builds the SDXL base UNet architecture from its config written below (2.57 B
parameters, random weights, created directly in the target dtype via the
meta device), and random rank-8 and rank-64 LoRA adapters on the attention
q/k/v/out projections (rank 8: 1,120 tensors, ~23 MB in fp16). In one run:

- diffusers (PEFT layers): load_lora_adapter from disk and from a state dict
  in RAM, each + delete_adapters; set_adapters between two resident
  adapters; hotswap from a state dict in RAM (enable_lora_hotswap first);
- this engine: switch between resident slots (activate), RAM tier -> slot
  (rank 8 into rank-8 slots, rank 8 and 64 into rank-64 slots), disk ->
  slot from a prepared file beside the raw read of the adapter file, and
  the first-time path from the original file; RSS over 1,000 switches;
- forward overhead of an active rank-8 adapter: the 560 target layers timed
  alone at the shapes of a 32x32-latent forward (captured on the meta
  device), and whole UNet forwards with and without the adapter.

Every figure is the median of --reps repetitions; ratios compare with
diffusers' fastest path for the same tier, measured in the same run.
--quick runs the same on the tiny pipeline's UNet (a CI smoke test; the
targets apply to the full-size UNet only). --batching adds per-sample
batched UNet forwards against one-by-one forwards.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference_pod.adapters.formats import canonicalize, load_adapter_file  # noqa: E402
from inference_pod.local.lora_factory import make_lora_state_dict, target_linears  # noqa: E402
from inference_pod.slots import host_memory  # noqa: E402
from inference_pod.slots.batching import activate_per_sample  # noqa: E402
from inference_pod.slots.engine import SlotEngine  # noqa: E402
from inference_pod.slots.files import load_prepared_file, save_prepared  # noqa: E402

SDXL_UNET = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, the fields that shape the network
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# -- model and adapters ---------------------------------------------------------------------------------


def build_unet(config: dict, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The UNet straight in `dtype` on `device`: no fp32 copy, no random init through Python loops."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(dtype)
    unet = unet.to_empty(device=device)
    # Weights: slices of one seeded random pool scaled by 1/sqrt(fan_in) (fast, deterministic, sane
    # activations); norms 1, biases 0.
    g = torch.Generator(device="cpu").manual_seed(0)
    pool = torch.randn(1 << 22, generator=g).to(device, dtype)
    off = 0
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
                continue
            flat = p.view(-1)
            fan_in = p[0].numel()
            for start in range(0, flat.numel(), pool.numel()):
                n = min(pool.numel(), flat.numel() - start)
                src = torch.roll(pool, off)[:n] if n < pool.numel() else pool
                flat[start : start + n].copy_(src)
            flat.mul_(fan_in**-0.5)
            off = (off + 7919) % pool.numel()
    unet.eval().requires_grad_(False)
    return unet


def make_lora(unet: nn.Module, rank: int, seed: int, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """A peft-format adapter whose up factors are randn * 0.1 (the one LoRA factory, scaled)."""
    return make_lora_state_dict(unet, rank=rank, seed=seed, strength=0.1 * rank**0.5, dtype=dtype)


def unet_inputs(unet: nn.Module, batch: int, latent: int, device, dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return {
        "sample": r(batch, cfg.in_channels, latent, latent),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": r(batch, 77, cfg.cross_attention_dim),
        "added_cond_kwargs": {"text_embeds": r(batch, text), "time_ids": r(batch, 6)},
    }


# -- timing -------------------------------------------------------------------------------------------------


class Timer:
    """Medians of wall time; or, with cpu_time, of this process's CPU time (on a shared CPU machine
    other processes stretch wall time by several percent, which drowns a 3% forward overhead)."""

    def __init__(self, device: torch.device, reps: int, cpu_time: bool = False) -> None:
        self.reps = reps
        self.sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.clock = time.process_time if cpu_time and device.type == "cpu" else time.perf_counter
        self.deadline = float("inf")  # time.monotonic() after which repetitions stop (at least one always runs)
        self.cut = 0  # measurements the time box cut short

    def box(self, seconds: float) -> None:
        """Time-box what follows: repetitions stop once `seconds` have passed (0: no limit)."""
        self.deadline = time.monotonic() + seconds if seconds > 0 else float("inf")

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def __call__(
        self,
        fn: Callable[[], object],
        inner: int = 1,
        reps: int | None = None,
        setup: Callable[[], object] | None = None,
    ) -> float:
        """Median seconds per call of fn over reps repetitions (each `inner` calls in a row)."""
        times: list[float] = []
        for _ in range(reps or self.reps):
            if times and self.expired():
                self.cut += 1
                break
            if setup is not None:
                setup()
            self.sync()
            t = self.clock()
            for _ in range(inner):
                fn()
            self.sync()
            times.append((self.clock() - t) / inner)
        return statistics.median(times)


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 1e6


def read_raw(path: Path, buf: torch.Tensor) -> None:
    """The floor for reading a file: its bytes from the page cache into an already mapped buffer."""
    view = memoryview(buf.numpy()).cast("B")
    with open(path, "rb", buffering=0) as f:
        got = 0
        while got < len(view):
            got += f.readinto(view[got:]) or len(view)


def fmt_t(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


# -- diffusers ----------------------------------------------------------------------------------------------


def bench_diffusers(unet, timer: Timer, files: dict, sds: dict, reps: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for rank in (8, 64):
        path = files[rank]

        def load_disk(path=path):
            unet.load_lora_adapter(str(path.parent), weight_name=path.name, prefix="unet", adapter_name="x")

        def load_ram(rank=rank):
            unet.load_lora_adapter(dict(sds[rank, 0]), prefix="unet", adapter_name="x")

        def delete():
            unet.delete_adapters("x")

        for label, load in (("disk", load_disk), ("ram", load_ram)):
            loads: list[float] = []
            deletes: list[float] = []
            for _ in range(reps):
                if loads and timer.expired():
                    timer.cut += 1
                    break
                loads.append(timer(load, reps=1))
                deletes.append(timer(delete, reps=1))
            out[f"load_{label}_{rank}"] = statistics.median(loads)
            out[f"delete_{rank}"] = statistics.median(deletes)
        # set_adapters between two resident adapters
        unet.load_lora_adapter(dict(sds[rank, 0]), prefix="unet", adapter_name="a")
        unet.load_lora_adapter(dict(sds[rank, 1]), prefix="unet", adapter_name="b")
        names = iter(["a", "b"] * (reps + 1))
        out[f"set_adapters_{rank}"] = timer(lambda names=names: unet.set_adapters(next(names)))
        unet.delete_adapters(["a", "b"])
    # Hotswap from a state dict in RAM: a pool of max rank 64 prepares its layers once for that rank.
    unet.enable_lora_hotswap(target_rank=64)
    unet.load_lora_adapter(dict(sds[8, 0]), prefix="unet", adapter_name="hs")
    for rank in (8, 64):
        which = iter([1, 0] * (reps + 1))
        out[f"hotswap_{rank}"] = timer(
            lambda rank=rank, which=which: unet.load_lora_adapter(
                dict(sds[rank, next(which)]), prefix="unet", adapter_name="hs", hotswap=True
            )
        )
    unet.delete_adapters("hs")
    unet.unload_lora()
    unet._prepare_lora_hotswap_kwargs = None
    assert not any(hasattr(m, "lora_A") for m in unet.modules()), "PEFT layers left behind"
    return out


# -- this engine ----------------------------------------------------------------------------------------------


def bench_engine(unet, timer: Timer, files: dict, sds: dict, workdir: Path, quick: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    cfg = unet.config
    holder = SimpleNamespace(unet=unet)
    loras = {key: canonicalize(dict(sd), cfg) for key, sd in sds.items()}
    for slot_rank in (8, 64):
        engine = SlotEngine(holder, n_slots=3, max_rank=slot_rank, max_active=3)
        out[f"slot_mb_{slot_rank}"] = engine.slot_nbytes / 1e6
        prepared = {key: engine.prepare(lora) for key, lora in loras.items() if key[0] <= slot_rank}
        for (rank, i), p in prepared.items():
            out[f"prepared_mb_{rank}"] = p.nbytes / 1e6
            if i == 0 and rank == 8:
                engine.load(0, p)
            if i == 1 and rank == 8:
                engine.load(1, p)
        # resident switch
        pairs = [[(0, 1.0)], [(1, 0.8)]]
        pairs2 = [[(0, 1.0), (1, 0.5)], [(1, 0.7), (0, 0.2)]]
        for key, ps in ((f"switch_{slot_rank}", pairs), (f"switch2_{slot_rank}", pairs2)):
            out[key] = timer(lambda ps=ps, engine=engine: [engine.activate(ps[i & 1]) for i in range(2000)]) / 2000
        # RAM -> slot, beside one plain copy of the same bytes into the same kind of memory as the slots (from
        # the same pinned buffers on a GPU: host -> device)
        for rank in (8, 64):
            if rank > slot_rank:
                continue
            which = iter([0, 1] * (timer.reps + 1))
            out[f"ram_{rank}_in_{slot_rank}"] = timer(
                lambda rank=rank, which=which, engine=engine, prepared=prepared: engine.load(
                    2, prepared[rank, next(which)]
                )
            )
            if slot_rank == 64:
                out[f"memcpy_{rank}"] = memcpy_floor(timer, [prepared[rank, 0].flat, prepared[rank, 1].flat], engine)
        # disk -> slot from a prepared file, beside the raw read of the original file
        for rank in (8, 64):
            if rank > slot_rank:
                continue
            pfile = save_prepared(engine, prepared[rank, 0], workdir / f"r{rank}.slot.safetensors")
            # Same kind of destination as the slot (huge pages on a CPU), pages already faulted in.
            buf = host_memory.zeros((files[rank].stat().st_size,), torch.uint8)
            read_raw(files[rank], buf)  # page cache warm for both files
            out[f"raw_read_{rank}"] = timer(lambda rank=rank, buf=buf: read_raw(files[rank], buf))
            out[f"disk_{rank}_in_{slot_rank}"] = timer(
                lambda pfile=pfile, engine=engine: load_prepared_file(engine, 2, pfile)
            )
            out[f"file_mb_{rank}"] = files[rank].stat().st_size / 1e6
            if slot_rank == 64:
                out[f"cold_{rank}"] = timer(
                    lambda rank=rank, engine=engine: engine.load(
                        2, engine.prepare(load_adapter_file(files[rank], cfg))
                    ),
                    reps=3,
                )
        if slot_rank == 8:
            # RSS over 1,000 switches (load into a slot + activate)
            keys = [(8, 0), (8, 1)]
            for i in range(100):
                engine.load(2, prepared[keys[i & 1]])
                engine.activate([(2, 1.0)])
            gc.collect()
            before = rss_mb()
            for i in range(1000):
                engine.load(i % 3, prepared[keys[i & 1]])
                engine.activate([(i % 3, 1.0)] if i % 4 else [(i % 3, 1.0), ((i + 1) % 3, 0.5)])
            gc.collect()
            out["rss_before"], out["rss_after"] = before, rss_mb()
        engine.activate([])
        engine.uninstall()
        del engine, prepared
        gc.collect()
    return out


def memcpy_floor(timer: Timer, srcs: list[torch.Tensor], engine: SlotEngine) -> float:
    """One plain copy of an adapter's bytes into a buffer like the slots (huge pages on a CPU, device memory on a
    GPU), alternating between two adapters as the RAM -> slot loads do, so neither is cache-hot."""
    if engine.device.type == "cpu":
        dst = host_memory.zeros(tuple(srcs[0].shape), srcs[0].dtype)
    else:
        dst = torch.empty(srcs[0].shape, dtype=srcs[0].dtype, device=engine.device)
    dst.copy_(srcs[0])
    which = iter([0, 1] * (timer.reps + 1))
    return timer(lambda: dst.copy_(srcs[next(which)], non_blocking=srcs[0].is_pinned()))


# -- forward overhead ----------------------------------------------------------------------------------------


def capture_target_shapes(config: dict, latent: int, dtype) -> collections.Counter:
    """(input shape, out_features) of every target layer in one forward, traced on the meta device."""
    from diffusers import UNet2DConditionModel

    shapes: collections.Counter = collections.Counter()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(dtype)
        for _, mod in target_linears(unet):
            mod.register_forward_hook(lambda m, a, o: shapes.update([(tuple(a[0].shape), m.out_features)]))
        with torch.no_grad():
            unet(**unet_inputs(unet, 1, latent, "meta", dtype))
    return shapes


def bench_layers(shapes: collections.Counter, timer: Timer, device, dtype, rank: int) -> dict[str, float]:
    """Summed time of the target layers in one forward: plain, this engine's layer, a PEFT-style layer.

    Each round times the three back to back; the overheads are medians of the
    per-round differences, which cancels the drift of a shared machine.
    """
    from inference_pod.slots.engine import SlotLoraLinear

    totals = {"plain": 0.0, "engine": 0.0, "peft": 0.0}
    g = torch.Generator().manual_seed(1)
    for (shape, n_out), count in shapes.items():
        n_in = shape[-1]
        lin = nn.Linear(n_in, n_out).to(device, dtype).requires_grad_(False)
        x = torch.randn(*shape, generator=g).to(device, dtype)
        holder = SimpleNamespace(unet=nn.Sequential(collections.OrderedDict(to_q=lin)))
        engine = SlotEngine(holder, n_slots=2, max_rank=rank)
        engine.storage.normal_(0, 0.02)
        engine.slot_rank[:] = [rank, rank]
        engine.activate([(0, 1.0)])
        slot_layer = holder.unet.to_q
        assert isinstance(slot_layer, SlotLoraLinear)
        a = nn.Linear(n_in, rank, bias=False).to(device, dtype).requires_grad_(False)
        b = nn.Linear(rank, n_out, bias=False).to(device, dtype).requires_grad_(False)
        drop = nn.Identity()

        def peft_like(x=x, lin=lin, a=a, b=b, drop=drop):  # peft.tuners.lora.Linear.forward, unmerged
            result = lin(x)
            return result + b(a(drop(x))) * 1.0

        variants = {"plain": lambda lin=lin, x=x: lin(x), "engine": lambda s=slot_layer, x=x: s(x), "peft": peft_like}
        rounds: dict[str, list[float]] = {k: [] for k in variants}
        with torch.inference_mode():
            for fn in variants.values():
                fn()
            for _ in range(timer.reps):
                for key, fn in variants.items():
                    rounds[key].append(timer(fn, inner=5, reps=1))
        plain = statistics.median(rounds["plain"])
        totals["plain"] += plain * count
        for key in ("engine", "peft"):
            extra = statistics.median(v - p for v, p in zip(rounds[key], rounds["plain"], strict=True))
            totals[key] += (plain + extra) * count
        engine.uninstall()
    return {
        "layers_plain": totals["plain"],
        "layers_engine": totals["engine"],
        "layers_peft": totals["peft"],
        "layers_n": sum(shapes.values()),
    }


def bench_forward(unet, timer: Timer, sd: dict, latent: int, reps: int) -> dict[str, float]:
    """Whole UNet forwards, no adapter and rank-8 adapter interleaved (slow machines drift)."""
    device, dtype = unet.device, unet.dtype
    inputs = unet_inputs(unet, 1, latent, device, dtype)
    engine = SlotEngine(SimpleNamespace(unet=unet), n_slots=1, max_rank=8)
    engine.load(0, engine.prepare(canonicalize(dict(sd), unet.config)))
    base, lora = [], []

    def fwd():
        with torch.inference_mode():
            unet(**inputs)

    engine.activate([(0, 1.0)])
    if device.type == "cuda":
        fwd()  # warm-up (kernel selection); a CPU forward has none worth its minutes
    for _ in range(reps):
        engine.activate([])
        base.append(timer(fwd, reps=1))
        engine.activate([(0, 1.0)])
        lora.append(timer(fwd, reps=1))
        print(f"  forward: base {base[-1]:.3f} s, rank-8 adapter {lora[-1]:.3f} s", flush=True)
    engine.activate([])
    engine.uninstall()
    return {
        "fwd_base": statistics.median(base),
        "fwd_lora": statistics.median(lora),
        "fwd_ratio": statistics.median(b / a for a, b in zip(base, lora, strict=True)),
    }


def bench_batching(unet, timer: Timer, sds: dict, latent: int, requests: int, reps: int) -> dict[str, float]:
    """One request = a CFG batch of 2; `requests` different adapters: one by one vs one per-sample batch."""
    device, dtype = unet.device, unet.dtype
    engine = SlotEngine(SimpleNamespace(unet=unet), n_slots=requests, max_rank=8)
    lora = canonicalize(dict(sds[8, 0]), unet.config)
    for s in range(requests):
        engine.load(s, engine.prepare(lora))
    one = unet_inputs(unet, 2, latent, device, dtype)
    many = unet_inputs(unet, 2 * requests, latent, device, dtype)

    def sequential():
        with torch.inference_mode():
            for s in range(requests):
                engine.activate([(s, 1.0)])
                unet(**one)

    def batched():
        activate_per_sample(engine, [[(s, 1.0)] for s in range(requests)])
        with torch.inference_mode():
            unet(**many)

    batched()
    t_seq = timer(sequential, reps=reps)
    t_bat = timer(batched, reps=reps)
    engine.activate([])
    engine.uninstall()
    return {"batch_seq": t_seq, "batch_bat": t_bat}


# -- report -----------------------------------------------------------------------------------------------------


def report(r: dict, args, unet_params: float) -> None:
    print()
    print(
        f"Adapter switching, {'tiny' if args.quick else 'SDXL'} UNet ({unet_params / 1e9:.2f} B params), "
        f"{args.dtype}, {args.device}, torch threads {torch.get_num_threads()}, medians of {args.reps}"
        + (" (layers, forwards and batching in process CPU time)" if args.cpu_time else "")
    )
    if "switch_8" in r and "set_adapters_8" in r:
        report_switching(r, args)
    report_forward(r, args)


def ok(value: float, target: float) -> str:
    return "yes" if value <= target else "NO"


def report_switching(r: dict, args) -> None:
    fastest_resident = r["set_adapters_8"]
    fastest_ram = {k: min(r[f"load_ram_{k}"] + r[f"delete_{k}"], r[f"hotswap_{k}"]) for k in (8, 64)}
    fastest_disk = {k: r[f"load_disk_{k}"] + r[f"delete_{k}"] for k in (8, 64)}
    rows = [
        ("resident switch, rank-8 slots (activate)", r["switch_8"], 10e-6, fastest_resident, "set_adapters"),
        ("resident switch, rank-64 slots", r["switch_64"], 10e-6, r["set_adapters_64"], "set_adapters"),
        ("resident switch, 2 adapters", r["switch2_8"], 10e-6, r["set_adapters_8"], "set_adapters"),
        ("RAM -> slot, rank 8 into rank-8 slots", r["ram_8_in_8"], 2e-3, fastest_ram[8], "hotswap/load"),
        ("RAM -> slot, rank 8 into rank-64 slots", r["ram_8_in_64"], 10e-3, fastest_ram[8], "hotswap/load"),
        ("RAM -> slot, rank 64 into rank-64 slots", r["ram_64_in_64"], None, fastest_ram[64], "hotswap/load"),
        ("disk -> slot, rank 8 (prepared file)", r["disk_8_in_8"], 2 * r["raw_read_8"], fastest_disk[8], "load+delete"),
        (
            "disk -> slot, rank 8 into rank-64 slots",
            r["disk_8_in_64"],
            2 * r["raw_read_8"],
            fastest_disk[8],
            "load+delete",
        ),
        (
            "disk -> slot, rank 64 (prepared file)",
            r["disk_64_in_64"],
            2 * r["raw_read_64"],
            fastest_disk[64],
            "load+delete",
        ),
        ("first use: original file -> slot, rank 8", r["cold_8"], None, fastest_disk[8], "load+delete"),
    ]
    print(
        f"rank-8 adapter: {r['file_mb_8']:.1f} MB file ({r['n_tensors']} tensors), prepared "
        f"{r['prepared_mb_8']:.1f} MB; slot {r['slot_mb_8']:.1f} MB (rank 8) / {r['slot_mb_64']:.1f} MB (rank 64); "
        f"raw file read {fmt_t(r['raw_read_8'])} (rank 8), {fmt_t(r['raw_read_64'])} (rank 64)"
    )
    print()
    head = f"| {'operation':42} | {'median':>10} | {'target':>10} | {'met':>3} | {'diffusers':>10} | {'speed-up':>8} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name, value, target, ref, _ in rows:
        tgt = fmt_t(target) if target else "-"
        met = ok(value, target) if target else "-"
        print(f"| {name:42} | {fmt_t(value):>10} | {tgt:>10} | {met:>3} | {fmt_t(ref):>10} | {ref / value:>7.0f}x |")
    print()
    print("diffusers (PEFT layers) on the same UNet, same run:")
    for k in (8, 64):
        print(
            f"  rank {k:2}: load_lora_adapter from disk {fmt_t(r[f'load_disk_{k}'])}, from RAM "
            f"{fmt_t(r[f'load_ram_{k}'])}, delete_adapters {fmt_t(r[f'delete_{k}'])}, set_adapters "
            f"{fmt_t(r[f'set_adapters_{k}'])}, hotswap from RAM {fmt_t(r[f'hotswap_{k}'])}"
        )
    print(
        "  (speed-up: resident vs set_adapters; RAM vs the faster of hotswap and load+delete from RAM; "
        "disk vs load from the file + delete)"
    )
    if "memcpy_8" in r:
        print(
            "one plain copy of the adapter's bytes into memory like the slots': "
            + ", ".join(
                f"rank {k} {fmt_t(r[f'memcpy_{k}'])} (RAM -> slot {r[f'ram_{k}_in_64'] / r[f'memcpy_{k}']:.2f}x it)"
                for k in (8, 64)
            )
        )
    print(
        f"RSS over 1,000 switches (load into a slot + activate): {r['rss_before']:.0f} MB -> "
        f"{r['rss_after']:.0f} MB ({r['rss_after'] - r['rss_before']:+.1f} MB)"
    )


def report_forward(r: dict, args) -> None:
    if "layers_plain" in r:
        print()
        lp, le, lpe = r["layers_plain"], r["layers_engine"], r["layers_peft"]
        print(
            f"The {r['layers_n']} target layers of one {args.latent}x{args.latent}-latent forward, timed alone: plain "
            f"{fmt_t(lp)}, with this engine's rank-8 update {fmt_t(le)} ({(le - lp) / lp * 100:+.1f}%), "
            f"PEFT-style unfused rank-8 {fmt_t(lpe)} ({(lpe - lp) / lp * 100:+.1f}%)"
        )
    if "fwd_base" in r:
        fb = r["fwd_base"]
        print(
            f"Whole UNet forward, batch 1, {args.latent}x{args.latent} latent: no adapter {fmt_t(fb)}, rank-8 "
            f"adapter {fmt_t(r['fwd_lora'])} (median ratio {r['fwd_ratio']:.4f}, target <= 1.03: "
            f"{ok(r['fwd_ratio'], 1.03)})"
        )
        if "layers_plain" in r:
            extra = r["layers_engine"] - r["layers_plain"]
            print(
                f"  layer-level estimate of the adapter's share of that forward: {extra / fb * 100:.2f}% "
                f"(PEFT-style {(r['layers_peft'] - r['layers_plain']) / fb * 100:.2f}%)"
            )
    if "batch_seq" in r:
        s, b = r["batch_seq"], r["batch_bat"]
        print(
            f"Batching {args.batch_requests} requests with different adapters (UNet forwards, CFG batch 2 each): "
            f"one by one {fmt_t(s)}, one per-sample batch {fmt_t(b)}: throughput x{s / b:.2f}"
        )


def quiet() -> None:
    """diffusers/peft warn on every adapter load in this loop (missing keys of the other adapter)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    logging.getLogger("peft").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="sdxl", choices=("sdxl", "flux", "both"), help="FLUX: adapter_switch_flux")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--forward-reps", type=int, default=2, help="whole-UNet forward pairs (slow on a CPU)")
    p.add_argument("--skip-forward", action="store_true", help="drop the forward section")
    p.add_argument("--latent", type=int, default=0, help="latent size for forwards (default 32; 128 on cuda)")
    p.add_argument(
        "--sections",
        default="diffusers,engine,layers,forward",
        help="comma-separated: diffusers, engine, layers, forward, batching",
    )
    p.add_argument("--batching", action="store_true", help="add the batching section")
    p.add_argument("--batch-requests", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the layers and forwards in process CPU time (use with --threads 1 on a shared CPU)",
    )
    p.add_argument("--quick", action="store_true", help="the tiny models (CI smoke; the targets do not apply)")
    p.add_argument(
        "--full",
        action="store_true",
        help="FLUX: the whole FLUX.1 transformer (19 + 38 blocks) with real weights built on the device (~24 GB in "
        "bf16: a GPU run); SDXL is always the full UNet unless --quick",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=0,
        help="wall-clock budget of the whole run in seconds (0: none); sections are time-boxed in turn (fewer "
        "repetitions, a section skipped when nothing is left) and the output says what was cut",
    )
    p.add_argument("--json", type=Path, default=None, help="also write every measured figure to this JSON file")
    flux = p.add_argument_group("FLUX (--family flux|both)")
    flux.add_argument("--rank", type=int, default=16, help="the FLUX adapters' rank")
    flux.add_argument("--double", type=int, default=0, help="joint blocks to build (default 1; 19 with --full)")
    flux.add_argument("--single", type=int, default=0, help="single blocks to build (default 1; 38 with --full)")
    flux.add_argument(
        "--full-depth-stub",
        action="store_true",
        help="every block at full size with zero-stride base weights (use --double 19 --single 38): switching and "
        "copies at the real adapter size without the 24 GB of weights; no forward",
    )
    flux.add_argument("--img-tokens", type=int, default=0, help="forward image tokens (default 256; 4096 on cuda)")
    flux.add_argument("--txt-tokens", type=int, default=0, help="forward text tokens (default 64; 512 on cuda)")
    return p


class Budget:
    """The run's wall-clock budget: each section is time-boxed to a share of what is left."""

    def __init__(self, total_s: float) -> None:
        self.start = time.monotonic()
        self.total = total_s
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start) if self.total > 0 else float("inf")

    def enter(self, name: str, timer: Timer, share: float, need_s: float = 5.0) -> bool:
        """Box the timer for this section (share of what is left); False (and noted) if under need_s is left."""
        left = self.left()
        if left < need_s:
            self.skipped.append(name)
            print(f"{name}: skipped, {max(left, 0):.0f} s of the budget left", flush=True)
            return False
        timer.box(0 if left == float("inf") else left * share)
        print(f"{name} ...", flush=True)
        return True


def run_sdxl(args, budget: Budget) -> dict[str, float]:
    sections = set(args.sections.split(","))
    if args.batching:
        sections.add("batching")
    if args.skip_forward:
        sections.discard("forward")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    args.latent = args.latent or (128 if device.type == "cuda" else 32)
    t = time.perf_counter()
    if args.quick:
        from inference_pod.worker.tiny_model import build_tiny_pipeline

        unet = build_tiny_pipeline().unet.to(device, dtype).requires_grad_(False)
        config = dict(unet.config)
        args.latent = unet.config.sample_size
    else:
        config = SDXL_UNET
        unet = build_unet(config, device, dtype)
    print(
        f"built the {'tiny' if args.quick else 'SDXL'} UNet in {time.perf_counter() - t:.0f} s, RSS {rss_mb():.0f} MB"
    )
    n_params = sum(p.numel() for p in unet.parameters())
    timer = Timer(device, args.reps)
    results: dict[str, float] = {"build_s": time.perf_counter() - t, "params": n_params}
    sds = {(rank, i): make_lora(unet, rank, seed=10 * rank + i) for rank in (8, 64) for i in (0, 1)}
    results["n_tensors"] = len(sds[8, 0])
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-") as tmp:
        workdir = Path(tmp)
        files = {}
        for rank in (8, 64):
            files[rank] = workdir / f"lora_r{rank}.safetensors"
            save_file(sds[rank, 0], str(files[rank]))
        if "diffusers" in sections and budget.enter("diffusers", timer, 0.35):
            results.update(bench_diffusers(unet, timer, files, sds, args.reps))
            gc.collect()
        if "engine" in sections and budget.enter("engine", timer, 0.4):
            results.update(bench_engine(unet, timer, files, sds, workdir, args.quick))
    compute_timer = Timer(device, args.reps, cpu_time=args.cpu_time)
    if "layers" in sections and budget.enter("layers", compute_timer, 0.3):
        shapes = capture_target_shapes(config, args.latent, dtype)
        results.update(bench_layers(shapes, compute_timer, device, dtype, rank=8))
    if "forward" in sections and budget.enter("whole forwards", compute_timer, 0.6):
        results.update(bench_forward(unet, compute_timer, sds[8, 0], args.latent, args.forward_reps))
    if "batching" in sections and budget.enter("batching", compute_timer, 0.9):
        results.update(bench_batching(unet, compute_timer, sds, args.latent, args.batch_requests, args.forward_reps))
    results["time_box_cuts"] = timer.cut + compute_timer.cut
    report(results, args, n_params)
    del unet
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def environment(device: torch.device) -> dict[str, str]:
    """What the figures were measured on (printed and kept in the JSON)."""
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": sys.version.split()[0], "device": str(device)}
    for name in ("torch", "diffusers", "peft", "transformers"):
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = "-"
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    env["cpus"] = str(os.cpu_count())
    env["torch_threads"] = str(torch.get_num_threads())
    return env


def guarded(name: str, run: Callable[[], dict], keep_going: bool) -> dict:
    """Run one family's section; with keep_going (--family both, a one-shot GPU run) a failure is printed and
    recorded instead of losing the other family's figures."""
    if not keep_going:
        return run()
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - reported, and the other family still runs
        traceback.print_exc()
        print(f"{name} section failed: {type(e).__name__}: {e}", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {e}"}


def main(argv: list[str] | None = None) -> None:
    quiet()
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = Budget(args.budget_s)
    env = environment(torch.device(args.device))
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    out: dict[str, object] = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    if args.family in ("sdxl", "both"):
        sdxl_share = Budget(budget.left() * 0.45 if args.family == "both" else budget.left())
        if not args.budget_s:
            sdxl_share = Budget(0)
        out["sdxl"] = guarded("SDXL", lambda: run_sdxl(args, sdxl_share), args.family == "both")
        budget.skipped += sdxl_share.skipped
    if args.family in ("flux", "both"):
        from benchmarks.adapter_switch_flux import run_flux

        flux_budget = Budget(budget.left() if args.budget_s else 0)
        out["flux"] = guarded("FLUX", lambda: run_flux(args, flux_budget), args.family == "both")
        budget.skipped += flux_budget.skipped
    if budget.skipped:
        print(f"skipped for lack of time: {', '.join(budget.skipped)}")
    out["skipped"] = budget.skipped
    out["wall_s"] = time.monotonic() - budget.start
    print(f"whole run {out['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
