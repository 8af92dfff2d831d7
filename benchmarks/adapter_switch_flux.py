"""Adapter switching on FLUX: the slot engine beside diffusers' LoRA paths on FLUX.1's transformer blocks.

    python benchmarks/adapter_switch_flux.py [--double 1] [--single 1] [--rank 16] [--reps 5]
                                             [--device cpu|cuda] [--dtype bfloat16] [--skip-forward] [--quick]

Builds a FluxTransformer2DModel at FLUX.1's full width (24 heads x 128 = 3,072, MLP 12,288, T5 width 4,096, the
real block shapes) with a reduced depth (--double joint blocks, --single single blocks; FLUX.1 has 19 + 38),
random weights made straight in the target dtype. Two random rank-R peft adapters on every transformer linear the
pool targets (attention incl. the joint blocks' context projections, MLPs, modulation: what kohya and ai-toolkit
train). In one run:

- diffusers (PEFT layers on the transformer): load_lora_adapter from a state dict in RAM + delete_adapters,
  set_adapters between two resident adapters, hotswap from RAM (enable_lora_hotswap(target_rank=R) first);
- this engine: switch between resident slots (activate), RAM tier -> slot (one copy of the adapter's rows),
  beside one plain memcpy of the same bytes;
- forward overhead of an active adapter: whole transformer forwards (256 image + 64 text tokens), no adapter and
  adapter interleaved.

Scaling to the whole FLUX.1 transformer (stated in the output): a resident switch does not depend on depth; RAM ->
slot, the memcpy and diffusers' load, hotswap and delete are per-layer work, scaled by the ratio of LoRA bytes
(19 + 38 blocks vs the measured ones; for diffusers the ratio of LoRA layers, the same within 1%); set_adapters
walks every LoRA layer, scaled the same way.
--quick runs the whole tiny-flux transformer unscaled (a smoke test). --full-depth-stub --double 19 --single 38
builds every block at full size with zero-stride base weights (the 12 B weights take no memory): adapters, slots
and diffusers' PEFT layers are then real and full-size, so switching and copies are measured unscaled (no forward).
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.adapter_switch import DTYPES, Timer, fmt_t, rss_mb  # noqa: E402
from inference_pod.adapters.formats import canonicalize  # noqa: E402
from inference_pod.families import FLUX  # noqa: E402
from inference_pod.local.lora_factory import make_flux_lora_state_dict, target_linears  # noqa: E402
from inference_pod.slots import host_memory  # noqa: E402
from inference_pod.slots.engine import SlotEngine  # noqa: E402
from inference_pod.slots.targets import FLUX_ATTENTION_TARGETS, FLUX_TARGETS  # noqa: E402

FLUX1 = {  # black-forest-labs/FLUX.1-dev transformer/config.json
    "patch_size": 1,
    "in_channels": 64,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
FULL_DOUBLE, FULL_SINGLE = 19, 38


def meta_transformer(double: int, single: int, dtype) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(num_layers=double, num_single_layers=single, **FLUX1).to(dtype)


def build_transformer(double: int, single: int, device, dtype) -> nn.Module:
    model = meta_transformer(double, single, dtype).to_empty(device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(p[0].numel() ** -0.5))
    return model.eval().requires_grad_(False)


def stub_transformer(double: int, single: int, dtype) -> nn.Module:
    """The transformer's modules at full depth with zero-stride weights (one element each, broadcast): every
    Linear has its real in/out features, so slots, adapters and diffusers' PEFT layers are real and full-size, but
    the 12 B base weights take no memory. Good for loading and switching adapters; never run forward."""
    model = meta_transformer(double, single, dtype)
    for module in model.modules():
        for key, param in list(module._parameters.items()):
            if param is not None:
                stub = torch.zeros((), dtype=dtype).expand(param.shape)
                module._parameters[key] = nn.Parameter(stub, requires_grad=False)
        for key, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[key] = torch.zeros((), dtype=buf.dtype).expand(buf.shape)
    return model.eval()


def lora_layer_elems(model: nn.Module) -> tuple[int, int]:
    """(LoRA layers, elements per rank row) over the model's target linears."""
    layers = target_linears(model, FLUX_TARGETS)
    return len(layers), sum(m.in_features + m.out_features for _, m in layers)


def inputs(model: nn.Module, n_img: int, n_txt: int, device, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    cfg = model.config

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    return {
        "hidden_states": r(1, n_img, cfg.in_channels),
        "encoder_hidden_states": r(1, n_txt, cfg.joint_attention_dim),
        "pooled_projections": r(1, cfg.pooled_projection_dim),
        "timestep": torch.full((1,), 0.5, device=device, dtype=dtype),
        "guidance": torch.full((1,), 3.5, device=device, dtype=dtype) if cfg.guidance_embeds else None,
        "img_ids": torch.zeros(n_img, 3, device=device),
        "txt_ids": torch.zeros(n_txt, 3, device=device),
    }


def bench_diffusers(model, timer: Timer, sds: list, rank: int, reps: int) -> dict[str, float]:
    out: dict[str, float] = {}

    def load_ram(i=0):
        model.load_lora_adapter(dict(sds[i]), prefix="transformer", adapter_name="x")

    loads, deletes = [], []
    for _ in range(reps):
        loads.append(timer(load_ram, reps=1))
        deletes.append(timer(lambda: model.delete_adapters("x"), reps=1))
    out["load_ram"], out["delete"] = statistics.median(loads), statistics.median(deletes)
    model.load_lora_adapter(dict(sds[0]), prefix="transformer", adapter_name="a")
    model.load_lora_adapter(dict(sds[1]), prefix="transformer", adapter_name="b")
    names = iter(["a", "b"] * (reps + 1))
    out["set_adapters"] = timer(lambda: model.set_adapters(next(names)))
    model.delete_adapters(["a", "b"])
    model.enable_lora_hotswap(target_rank=rank)
    model.load_lora_adapter(dict(sds[0]), prefix="transformer", adapter_name="hs")
    which = iter([1, 0] * (reps + 1))
    out["hotswap"] = timer(
        lambda: model.load_lora_adapter(dict(sds[next(which)]), prefix="transformer", adapter_name="hs", hotswap=True)
    )
    model.delete_adapters("hs")
    model.unload_lora()
    model._prepare_lora_hotswap_kwargs = None
    assert not any(hasattr(m, "lora_A") for m in model.modules()), "PEFT layers left behind"
    return out


def bench_engine(model, timer: Timer, sds: list, rank: int) -> dict[str, float]:
    engine = SlotEngine(
        SimpleNamespace(transformer=model),
        n_slots=3,
        max_rank=rank,
        target_suffixes=FLUX_TARGETS,
        components=("transformer",),
        max_active=3,
    )
    prepared = [engine.prepare(canonicalize(dict(sd), family=FLUX)) for sd in sds]
    engine.load(0, prepared[0])
    engine.load(1, prepared[1])
    out: dict[str, float] = {"slot_mb": engine.slot_nbytes / 1e6, "prepared_mb": prepared[0].nbytes / 1e6}
    for key, ps in (("switch", [[(0, 1.0)], [(1, 0.8)]]), ("switch2", [[(0, 1.0), (1, 0.5)], [(1, 0.7), (0, 0.2)]])):
        out[key] = timer(lambda ps=ps: [engine.activate(ps[i & 1]) for i in range(2000)]) / 2000
    which = iter([0, 1] * (timer.reps + 1))
    out["ram"] = timer(lambda: engine.load(2, prepared[next(which)]))
    # The floor: one memcpy of the same bytes between buffers of the same kind (huge pages on a CPU), alternating
    # between the two adapters as the RAM -> slot loads do (the same working set, so neither is cache-hot).
    srcs = [p.flat for p in prepared]
    dst = host_memory.zeros(tuple(srcs[0].shape), srcs[0].dtype) if srcs[0].is_cpu else torch.empty_like(srcs[0])
    dst.copy_(srcs[0])
    which2 = iter([0, 1] * (timer.reps + 1))
    out["memcpy"] = timer(lambda: dst.copy_(srcs[next(which2)]))
    # An attention-only adapter in the same all-linears pool: kept compact (its column spans only).
    attn = engine.prepare(
        canonicalize(
            make_flux_lora_state_dict(model, rank=rank, seed=3, strength=0.1, suffixes=FLUX_ATTENTION_TARGETS),
            family=FLUX,
        )
    )
    out["attn_mb"] = attn.nbytes / 1e6
    out["ram_attn"] = timer(lambda: engine.load(2, attn))
    engine.activate([])
    engine.uninstall()
    return out


def bench_forward(model, timer: Timer, sd: dict, rank: int, reps: int) -> dict[str, float]:
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    x = inputs(model, 256, 64, device, dtype)
    engine = SlotEngine(
        SimpleNamespace(transformer=model), n_slots=1, max_rank=rank, target_suffixes=FLUX_TARGETS,
        components=("transformer",),
    )  # fmt: skip
    engine.load(0, engine.prepare(canonicalize(dict(sd), family=FLUX)))

    def fwd():
        with torch.inference_mode():
            model(**x)

    base, lora = [], []
    engine.activate([(0, 1.0)])
    fwd()  # warm-up
    for _ in range(reps):
        engine.activate([])
        base.append(timer(fwd, reps=1))
        engine.activate([(0, 1.0)])
        lora.append(timer(fwd, reps=1))
        print(f"  forward: base {base[-1]:.3f} s, rank-{rank} adapter {lora[-1]:.3f} s", flush=True)
    engine.activate([])
    engine.uninstall()
    return {
        "fwd_base": statistics.median(base),
        "fwd_lora": statistics.median(lora),
        "fwd_ratio": statistics.median(b / a for a, b in zip(base, lora, strict=True)),
    }


def report(r: dict, args, scale: float, full_mb: float) -> None:
    s = scale
    fast_ram = min(r["load_ram"] + r["delete"], r["hotswap"])
    what = "tiny-flux (unscaled)" if args.quick else f"FLUX.1 width, {args.double}+{args.single} blocks"
    if args.full_depth_stub:
        what += " (zero-stride base weights)"
    print()
    print(
        f"FLUX adapter switching, {what}, rank {args.rank} on every transformer linear, {args.dtype}, {args.device}, "
        f"torch threads {torch.get_num_threads()}, medians of {args.reps}"
    )
    print(
        f"measured: adapter {r['prepared_mb']:.1f} MB ({r['layers']} LoRA layers), slot {r['slot_mb']:.1f} MB; "
        + ("" if args.quick or s == 1.0 else f"scaled x{s:.2f} to 19 + 38 blocks: adapter {full_mb:.0f} MB")
    )
    rows = [
        ("resident switch (activate)", r["switch"], 1.0, 10e-6, r["set_adapters"] * s, "set_adapters"),
        ("resident switch, 2 adapters", r["switch2"], 1.0, 10e-6, r["set_adapters"] * s, "set_adapters"),
        ("RAM -> slot", r["ram"], s, 2 * r["memcpy"] * s, fast_ram * s, "hotswap/load+delete"),
        ("RAM -> slot, attention-only", r["ram_attn"], s, 2 * r["memcpy"] * s, fast_ram * s, "(full adapter's)"),
    ]
    print()
    head = f"| {'operation':30} | {'median':>10} | {'target':>10} | {'met':>3} | {'diffusers':>10} | {'speed-up':>8} |"
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for name, value, k, target, ref, _ in rows:
        v = value * k
        met = "yes" if v <= target else "NO"
        print(f"| {name:30} | {fmt_t(v):>10} | {fmt_t(target):>10} | {met:>3} | {fmt_t(ref):>10} | {ref / v:>7.0f}x |")
    print()
    print(
        f"one memcpy of the adapter's bytes {fmt_t(r['memcpy'] * s)}; diffusers (PEFT layers), same run"
        f"{'' if s == 1.0 else ', scaled'}: load_lora_adapter from RAM {fmt_t(r['load_ram'] * s)}, "
        f"delete_adapters {fmt_t(r['delete'] * s)}, set_adapters {fmt_t(r['set_adapters'] * s)}, "
        f"hotswap from RAM {fmt_t(r['hotswap'] * s)}"
    )
    print(
        f"attention-only rank-{args.rank} adapter in the same pool: kept compact, {r['attn_mb'] * s:.0f} MB in RAM "
        f"instead of {r['prepared_mb'] * s:.0f} MB (diffusers column: the full adapter's fastest path)"
    )
    if "fwd_base" in r:
        print(
            f"forward, 256 image + 64 text tokens ({'measured depth, not scaled' if not args.quick else 'tiny'}): "
            f"no adapter {fmt_t(r['fwd_base'])}, rank-{args.rank} adapter {fmt_t(r['fwd_lora'])} (median ratio "
            f"{r['fwd_ratio']:.4f}, target <= 1.03: {'yes' if r['fwd_ratio'] <= 1.03 else 'NO'})"
        )


def quiet() -> None:
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    logging.getLogger("peft").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)


def main(argv: list[str] | None = None) -> None:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--double", type=int, default=1, help="joint blocks to build (FLUX.1: 19)")
    p.add_argument("--single", type=int, default=1, help="single blocks to build (FLUX.1: 38)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--forward-reps", type=int, default=3)
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="the whole tiny-flux transformer, unscaled")
    p.add_argument(
        "--full-depth-stub",
        action="store_true",
        help="every block at full size with zero-stride base weights (use --double 19 --single 38): switching and "
        "copies at the real adapter size, unscaled; no forward",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    t = time.perf_counter()
    if args.quick:
        from inference_pod.worker.tiny_flux import build_tiny_flux_pipeline

        model = build_tiny_flux_pipeline().transformer.to(device, dtype).requires_grad_(False)
    elif args.full_depth_stub:
        model = stub_transformer(args.double, args.single, dtype)
        args.skip_forward = True
    else:
        model = build_transformer(args.double, args.single, device, dtype)
    print(f"built the transformer in {time.perf_counter() - t:.0f} s, RSS {rss_mb():.0f} MB", flush=True)
    layers, elems = lora_layer_elems(model)
    scale, full_mb = 1.0, 0.0
    if not args.quick:
        one_double, one_single, zero = (meta_transformer(d, s, dtype) for d, s in ((1, 0), (0, 1), (0, 0)))
        _, e0 = lora_layer_elems(zero)  # the final proj_out
        _, ed = lora_layer_elems(one_double)
        _, es = lora_layer_elems(one_single)
        full = (ed - e0) * FULL_DOUBLE + (es - e0) * FULL_SINGLE + e0
        scale = full / elems
        full_mb = full * args.rank * torch.empty(0, dtype=dtype).element_size() / 1e6
    sds = [make_flux_lora_state_dict(model, rank=args.rank, seed=s, strength=0.1, dtype=dtype) for s in (1, 2)]
    timer = Timer(device, args.reps)
    results: dict[str, float] = {"layers": layers}
    print("diffusers ...", flush=True)
    results.update(bench_diffusers(model, timer, sds, args.rank, args.reps))
    gc.collect()
    print("engine ...", flush=True)
    results.update(bench_engine(model, timer, sds, args.rank))
    if not args.skip_forward:
        print("forwards ...", flush=True)
        results.update(bench_forward(model, timer, sds[0], args.rank, args.forward_reps))
    report(results, args, scale, full_mb)


if __name__ == "__main__":
    main()
