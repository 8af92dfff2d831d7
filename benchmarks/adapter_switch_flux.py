"""Adapter switching on FLUX: the slot engine beside diffusers' LoRA paths on FLUX.1's transformer blocks.

    python benchmarks/adapter_switch_flux.py [--double 1] [--single 1] [--rank 16] [--reps 5] [--full]
                                             [--device cpu|cuda] [--dtype bfloat16] [--skip-forward] [--quick]
    (the same as: python benchmarks/adapter_switch.py --family flux ...; --family both runs SDXL then FLUX)

Builds a FluxTransformer2DModel at FLUX.1's full width (24 heads x 128 = 3,072, MLP 12,288, T5 width 4,096, the
real block shapes) with a reduced depth (--double joint blocks, --single single blocks; FLUX.1 has 19 + 38), or the
whole 19 + 38 with --full (12 B parameters, ~24 GB in bf16: a GPU run), random weights made on the device in the
target dtype. Two random rank-R peft adapters on every transformer linear the pool targets (attention incl. the
joint blocks' context projections, MLPs, modulation: what kohya and ai-toolkit train; rank 16: ~172 MB in bf16 at
full depth). In one run:

- diffusers (PEFT layers on the transformer): load_lora_adapter from a state dict in RAM + delete_adapters,
  set_adapters between two resident adapters, hotswap from RAM (enable_lora_hotswap(target_rank=R) first);
- this engine: switch between resident slots (activate), RAM tier -> slot (one copy of the adapter's rows; pinned
  host memory -> device on a GPU), beside one plain copy of the same bytes into the same kind of memory;
- forward overhead of an active adapter: whole transformer forwards (256 image + 64 text tokens on a CPU, 4,096 +
  512 on a GPU: a 1024x1024 image), no adapter and adapter interleaved, then diffusers' PEFT layers.

Scaling to the whole FLUX.1 transformer (stated in the output) at reduced depth: a resident switch does not depend
on depth; RAM -> slot, the memcpy and diffusers' load, hotswap and delete are per-layer work, scaled by the ratio of
LoRA bytes (19 + 38 blocks vs the measured ones; for diffusers the ratio of LoRA layers, the same within 1%);
set_adapters walks every LoRA layer, scaled the same way. --full measures all of it unscaled.
--quick runs the whole tiny-flux transformer unscaled (a smoke test). --full-depth-stub --double 19 --single 38
builds every block at full size with zero-stride base weights (the 12 B weights take no memory): adapters, slots
and diffusers' PEFT layers are then real and full-size, so switching and copies are measured unscaled (no forward).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.adapter_switch import DTYPES, Budget, Timer, fmt_t, memcpy_floor, rss_mb  # noqa: E402
from inference_pod.adapters.formats import canonicalize  # noqa: E402
from inference_pod.families import FLUX  # noqa: E402
from inference_pod.local.lora_factory import make_flux_lora_state_dict, target_linears  # noqa: E402
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
    """Random weights made on the device itself, in the target dtype (the 12 B of FLUX.1 in seconds on a GPU; no
    CPU initialisation, no fp32 copy): N(0, 1/fan_in) matrices, norms 1, biases 0."""
    model = meta_transformer(double, single, dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g)
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

    loads: list[float] = []
    deletes: list[float] = []
    for _ in range(reps):
        if loads and timer.expired():
            timer.cut += 1
            break
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
    # The floor: one copy of the same bytes into memory like the slots' (huge pages on a CPU; on a GPU from the
    # same pinned buffers to device memory), alternating between the two adapters as the loads do.
    out["memcpy"] = memcpy_floor(timer, [p.flat for p in prepared], engine)
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


def bench_forward(model, timer: Timer, sd: dict, rank: int, reps: int, tokens: tuple[int, int]) -> dict[str, float]:
    """Whole transformer forwards, no adapter and an active rank-R slot adapter interleaved; then diffusers' PEFT
    layers with the same adapter active (same inputs), if the time box allows."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    x = inputs(model, *tokens, device, dtype)
    engine = SlotEngine(
        SimpleNamespace(transformer=model), n_slots=1, max_rank=rank, target_suffixes=FLUX_TARGETS,
        components=("transformer",),
    )  # fmt: skip
    engine.load(0, engine.prepare(canonicalize(dict(sd), family=FLUX)))

    def fwd():
        with torch.inference_mode():
            model(**x)

    base: list[float] = []
    lora: list[float] = []
    engine.activate([(0, 1.0)])
    fwd()  # warm-up (kernel selection, caches)
    engine.activate([])
    fwd()
    for _ in range(reps):
        if base and timer.expired():
            timer.cut += 1
            break
        engine.activate([])
        base.append(timer(fwd, reps=1))
        engine.activate([(0, 1.0)])
        lora.append(timer(fwd, reps=1))
        print(f"  forward: base {base[-1]:.4f} s, rank-{rank} adapter {lora[-1]:.4f} s", flush=True)
    engine.activate([])
    engine.uninstall()
    out = {
        "fwd_base": statistics.median(base),
        "fwd_lora": statistics.median(lora),
        "fwd_ratio": statistics.median(b / a for a, b in zip(base, lora, strict=True)),
        "fwd_pairs": len(base),
    }
    if not timer.expired():
        model.load_lora_adapter(dict(sd), prefix="transformer", adapter_name="p")
        model.set_adapters("p")
        fwd()
        peft = [timer(fwd, reps=1) for _ in range(max(1, min(reps, len(base))))]
        model.delete_adapters("p")
        model.unload_lora()
        out["fwd_peft"] = statistics.median(peft)
        out["fwd_peft_ratio"] = out["fwd_peft"] / out["fwd_base"]
    return out


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
            f"forward, {args.img_tokens} image + {args.txt_tokens} text tokens "
            f"({'measured depth, not scaled' if not args.quick else 'tiny'}), {r['fwd_pairs']:.0f} pairs: "
            f"no adapter {fmt_t(r['fwd_base'])}, rank-{args.rank} adapter {fmt_t(r['fwd_lora'])} (median ratio "
            f"{r['fwd_ratio']:.4f}, target <= 1.03: {'yes' if r['fwd_ratio'] <= 1.03 else 'NO'})"
            + (
                f"; diffusers' PEFT layers, same adapter: {fmt_t(r['fwd_peft'])} (ratio {r['fwd_peft_ratio']:.4f})"
                if "fwd_peft" in r
                else ""
            )
        )
    if r.get("time_box_cuts"):
        print(f"time box: {r['time_box_cuts']:.0f} measurements ran fewer repetitions than asked")


def run_flux(args, budget: Budget) -> dict[str, float]:
    """The FLUX section of adapter_switch.py (--family flux|both): build, measure, print the table."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.full:
        args.double, args.single = args.double or FULL_DOUBLE, args.single or FULL_SINGLE
    args.double, args.single = args.double or 1, args.single or 1
    args.img_tokens = args.img_tokens or (4096 if device.type == "cuda" else 256)  # 4,096: a 1024x1024 image
    args.txt_tokens = args.txt_tokens or (512 if device.type == "cuda" else 64)
    t = time.perf_counter()
    if args.quick:
        from inference_pod.worker.tiny_flux import build_tiny_flux_pipeline

        model = build_tiny_flux_pipeline().transformer.to(device, dtype).requires_grad_(False)
    elif args.full_depth_stub:
        model = stub_transformer(args.double, args.single, dtype)
        args.skip_forward = True
    else:
        model = build_transformer(args.double, args.single, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t
    what = "tiny-flux" if args.quick else f"FLUX transformer ({args.double}+{args.single} blocks)"
    print(f"built the {what} in {build_s:.0f} s, RSS {rss_mb():.0f} MB")
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
    results: dict[str, float] = {"layers": layers, "build_s": build_s, "scale": scale}
    if budget.enter("FLUX diffusers", timer, 0.4):
        results.update(bench_diffusers(model, timer, sds, args.rank, args.reps))
        gc.collect()
    if budget.enter("FLUX engine", timer, 0.4):
        results.update(bench_engine(model, timer, sds, args.rank))
    if not args.skip_forward and budget.enter("FLUX forwards", timer, 0.9):
        results.update(
            bench_forward(model, timer, sds[0], args.rank, args.forward_reps, (args.img_tokens, args.txt_tokens))
        )
    results["time_box_cuts"] = timer.cut
    if "switch" in results and "set_adapters" in results:
        report(results, args, scale, full_mb)
    else:
        print("FLUX: not enough of the run was measured for the table (see above)")
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> None:
    """adapter_switch.py --family flux, with this file's defaults (5 repetitions, 3 forward pairs)."""
    from benchmarks.adapter_switch import main as switch_main

    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = ["--family", "flux", "--reps", "5", "--forward-reps", "3"]
    switch_main(defaults + argv)


if __name__ == "__main__":
    main()
