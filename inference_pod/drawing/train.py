"""Train the `drawing` model and its LoRAs from the synthetic shapes data set; print how well they draw.

    python -m inference_pod.drawing.train [--out DIR] [--device auto|cpu|cuda] [--schedule cpu|gpu] [--quick]
                                          [--from-model DIR --styles outline,...]

Phases, each seeded: (1) the VAE learns to reconstruct the shapes (plain and outlined); (2) the UNet of an
SDXL-architecture pipeline (the `tiny` model's classes and tokenizer, text encoders frozen at their seeded
weights) learns to denoise the VAE's latents conditioned on the captions, with 10% of the captions dropped to
zeros as SDXL's pipeline does for an empty negative prompt (classifier-free guidance); (3) one peft LoRA per style
(outline, square, palette) on the UNet's attention projections learns the restyled pictures for the same captions
(--from-model DIR: phase 3 alone, on a model trained before, e.g. the shipped one; --styles: some of the LoRAs).
Then every caption is drawn with several seeds through the real StableDiffusionXLPipeline and judged from the
pixels (inference_pod.drawing.judge), and a table is printed. The outputs: DIR/model (a diffusers directory, fp16)
and DIR/loras/<style>.safetensors (peft keys) + <style>.kohya.safetensors (kohya keys with SGM block names).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference_pod.drawing import shapes
from inference_pod.drawing.judge import judge
from inference_pod.drawing.lora_io import peft_to_kohya, unet_lora_state_dict
from inference_pod.drawing.model import DRAWING_CONFIG, SAMPLE_STEPS, load_trained, make_scheduler, time_ids
from inference_pod.slots.targets import UNET_TARGETS


@dataclass(frozen=True)
class Schedule:
    vae_steps: int = 200
    unet_steps: int = 800
    lora_steps: int = 120
    batch: int = 1024
    scenes: int = 4800
    lora_rank: int = 8
    eval_seeds: int = 4
    unet_lr: float = 1.5e-3
    lora_lr: float = 3e-3
    # A style that needs a longer or larger LoRA than the others: (style, steps, rank, learning rate).
    lora_overrides: tuple[tuple[str, int, int, float], ...] = ()

    def lora_plan(self, style: str) -> tuple[int, int, float]:
        """(steps, rank, learning rate) of this style's LoRA."""
        for name, steps, rank, lr in self.lora_overrides:
            if name == style:
                return steps, rank, lr
        return self.lora_steps, self.lora_rank, self.lora_lr


# The shipped weights come from `cpu`: more, smaller steps than `gpu` (a tenth of its pictures), so that two CPU
# cores train the model and its LoRAs in about 44 minutes (the `gpu` schedule would take 8.6 h there).
SCHEDULES = {
    "gpu": Schedule(),
    # outline: 2-px strokes on a 32-px picture need a larger LoRA trained longer than the other styles' (250 steps
    # at rank 8 hollowed the shapes into scribbles that the judge never called outlined).
    "cpu": Schedule(
        vae_steps=400,
        unet_steps=1500,
        lora_steps=250,
        batch=64,
        unet_lr=1e-3,
        lora_lr=2e-3,
        lora_overrides=(("outline", 1500, 16, 3e-3),),
    ),
    "quick": Schedule(
        vae_steps=3,
        unet_steps=3,
        lora_steps=2,
        batch=8,
        scenes=48,
        eval_seeds=1,
        lora_overrides=(("outline", 3, 4, 3e-3),),
    ),
}
QUICK = SCHEDULES["quick"]


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def images_tensor(scenes: list[shapes.Scene]) -> torch.Tensor:
    """Scenes rendered to [-1, 1] float images [N, 3, H, W]."""
    arr = np.stack([shapes.render(s) for s in scenes]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, device: torch.device, seed: int) -> None:
    _seed(seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch,), generator=g)].to(device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-5 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"  vae step {step:5d}  loss {loss.item():.4f}", flush=True)
    vae.eval()


@torch.no_grad()
def encode(vae, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) of every image, on the device, unscaled."""
    means, stds = [], []
    for i in range(0, len(images), 512):
        d = vae.encode(images[i : i + 512].to(device)).latent_dist
        means.append(d.mean)
        stds.append(d.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def caption_embeddings(pipe, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pipeline feeds the UNet for each caption: (prompt_embeds [N, 77, D], pooled [N, P])."""
    emb, _, pooled, _ = pipe.encode_prompt(
        prompt=captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return emb, pooled


def train_unet(
    unet,
    params,
    latents: tuple[torch.Tensor, torch.Tensor],
    caption_idx: torch.Tensor,
    embeds: tuple[torch.Tensor, torch.Tensor],
    scaling: float,
    steps: int,
    batch: int,
    lr: float,
    device: torch.device,
    seed: int,
    label: str,
    drop: float = 0.1,
) -> None:
    """Epsilon-prediction denoising on the data set's latents; `params` are the ones trained."""
    from diffusers import DDPMScheduler

    _seed(seed)
    noise_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    g = torch.Generator(device=device).manual_seed(seed)
    mean, std = latents
    emb, pooled = embeds
    ids = time_ids(batch, device)
    unet.train()
    for step in range(steps):
        idx = torch.randint(0, len(mean), (batch,), device=device, generator=g)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, device=device, generator=g)) * scaling
        noise = torch.randn(x0.shape, device=device, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), device=device, generator=g)
        noisy = noise_sched.add_noise(x0, noise, t)
        c = caption_idx.to(device)[idx]
        keep = (torch.rand(batch, device=device, generator=g) >= drop).float()
        pred = unet(
            noisy,
            t,
            encoder_hidden_states=emb[c] * keep[:, None, None],
            added_cond_kwargs={"text_embeds": pooled[c] * keep[:, None], "time_ids": ids},
        ).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"  {label} step {step:5d}  loss {loss.item():.4f}", flush=True)
    unet.eval()


@torch.no_grad()
def draw(pipe, prompts: list[str], seed: int, steps: int = SAMPLE_STEPS) -> list[np.ndarray]:
    """Each prompt drawn once with one seed (guidance 5, the worker's default), as uint8 arrays."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = pipe(
        prompt=prompts,
        num_inference_steps=steps,
        guidance_scale=5.0,
        width=shapes.SIZE,
        height=shapes.SIZE,
        generator=g,
        output_type="np",
    ).images
    return [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in out]


def expected(style: str | None, shape: str, colour: str) -> tuple[str, str, bool]:
    """(shape, colour, outlined) a picture of this caption should show under this style (None: the base)."""
    scene = shapes.Scene(shape, colour, "white")
    if style is not None:
        scene = shapes.restyle(scene, style)
    return scene.shape, scene.colour, scene.outline


def evaluate(pipe, style: str | None, seeds: int) -> dict[str, float]:
    """Fractions of pictures whose shape, colour, fill and background come out as the caption (and style) ask."""
    combos = shapes.all_captions()
    prompts = [shapes.caption(*c) for c in combos]
    hits = {"shape": 0, "colour": 0, "fill": 0, "background": 0, "all": 0}
    n = 0
    for seed in range(seeds):
        for (shape, colour, bg), im in zip(combos, draw(pipe, prompts, 1000 + seed), strict=True):
            want_shape, want_colour, want_outline = expected(style, shape, colour)
            v = judge(im)
            ok = {
                "shape": v.shape == want_shape,
                "colour": v.colour == want_colour,
                "fill": v.outline == want_outline,
                "background": v.background == bg,
            }
            ok["all"] = all(ok.values())
            for k, good in ok.items():
                hits[k] += good
            n += 1
    return {k: v / n for k, v in hits.items()}


def train_base(
    sch: Schedule,
    plain: torch.Tensor,
    styled: dict[str, torch.Tensor],
    caption_idx: torch.Tensor,
    captions: list[str],
    device: torch.device,
    seed: int,
    timings: dict[str, float],
):
    """Phases 1 and 2: the VAE, then the UNet, from the architecture's seeded weights.

    Returns (pipe, latent scaling, caption embeddings), the weights rounded to fp16 as they ship."""
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    pipe = build_tiny_pipeline(DRAWING_CONFIG)
    pipe.scheduler = make_scheduler()
    pipe.to(device)
    for enc in (pipe.text_encoder, pipe.text_encoder_2):
        enc.requires_grad_(False)

    print(f"== vae ({sch.vae_steps} steps, batch {sch.batch}, on {device})", flush=True)
    t0 = time.perf_counter()
    train_vae(pipe.vae, torch.cat([plain, *styled.values()]), sch.vae_steps, sch.batch, device, seed + 1)
    timings["vae"] = time.perf_counter() - t0

    mean, std = encode(pipe.vae, plain, device)
    scaling = float(1.0 / mean.std())
    pipe.vae.register_to_config(scaling_factor=scaling)
    embeds = caption_embeddings(pipe, captions, device)

    print(f"== unet ({sch.unet_steps} steps)", flush=True)
    t0 = time.perf_counter()
    train_unet(
        pipe.unet,
        list(pipe.unet.parameters()),
        (mean, std),
        caption_idx,
        embeds,
        scaling,
        sch.unet_steps,
        sch.batch,
        sch.unet_lr,
        device,
        seed + 2,
        "unet",
    )
    timings["unet"] = time.perf_counter() - t0

    # What ships is fp16: round the weights now so the evaluation judges the shipped model.
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.to(torch.float16).to(torch.float32)
    return pipe, scaling, embeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inference_pod.drawing.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="a few steps of each phase (a smoke test, not a model)")
    p.add_argument(
        "--schedule",
        choices=sorted(SCHEDULES),
        default="cpu",
        help="cpu: the shipped weights' (about 44 min on 2 cores); gpu: batch 1024, the previous weights'",
    )
    p.add_argument(
        "--from-model",
        type=Path,
        default=None,
        help="train only the LoRAs, on this drawing model (a diffusers directory such as weights/model)",
    )
    p.add_argument(
        "--styles",
        default=",".join(shapes.STYLES),
        help=f"the LoRAs to train, comma-separated (default: all of {', '.join(shapes.STYLES)})",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    p.add_argument("--archive", type=Path, default=None, help="after each phase, also tar the outputs to this file")
    p.add_argument(
        "--no-eval", action="store_true", help="skip the evaluation (python -m inference_pod.drawing.evaluate)"
    )
    p.add_argument(
        "--probe", action="store_true", help="time 5 steps of each phase at the full batch; print the full estimate"
    )
    args = p.parse_args(argv)
    styles = [s for s in args.styles.split(",") if s]
    unknown = sorted(set(styles) - set(shapes.STYLES))
    if unknown or not styles:
        p.error(f"--styles: unknown style(s) {unknown} (known: {', '.join(shapes.STYLES)})")
    if args.from_model is not None and not (args.from_model / "model_index.json").is_file():
        p.error(f"--from-model: {args.from_model} is not a diffusers model directory (no model_index.json)")
    if args.from_model is not None and args.probe:
        p.error("--probe times the VAE and UNet phases, which --from-model skips")
    from diffusers import StableDiffusionXLPipeline  # noqa: F401 (import cost outside the timings)
    from peft import LoraConfig

    sch = QUICK if args.quick else SCHEDULES[args.schedule]
    full = sch
    if args.probe:
        sch = dataclasses.replace(full, vae_steps=5, unet_steps=5, lora_steps=5, lora_overrides=(), eval_seeds=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    scenes = shapes.random_scenes(sch.scenes, args.seed)
    captions = [shapes.caption(*c) for c in shapes.all_captions()]
    index = {c: i for i, c in enumerate(captions)}
    caption_idx = torch.tensor([index[s.caption] for s in scenes])
    # A full run's VAE learns every style's pictures; a LoRA-only run renders just the ones it trains.
    rendered = shapes.STYLES if args.from_model is None else styles
    styled = {s: images_tensor([shapes.restyle(x, s) for x in scenes]) for s in rendered}

    if args.from_model is not None:
        # The files are fp16; in fp32 they are the very weights a full run trains its LoRAs on (it rounds them).
        pipe = load_trained(args.from_model, device)
        scaling = float(pipe.vae.config.scaling_factor)
        embeds = caption_embeddings(pipe, captions, device)
    else:
        pipe, scaling, embeds = train_base(
            sch, images_tensor(scenes), styled, caption_idx, captions, device, args.seed, timings
        )
    pipe.unet.requires_grad_(False)
    if args.probe:
        lora_steps = sum(full.lora_plan(s)[0] for s in styles)
        est = timings["vae"] * full.vae_steps / 5 + timings["unet"] * (full.unet_steps + lora_steps) / 5
        print(
            f"\nprobe on {device} ({torch.get_num_threads()} threads): vae {timings['vae'] / 5:.3f} s/step, "
            f"unet {timings['unet'] / 5:.3f} s/step; the full schedule: about {est / 60:.1f} min"
        )
        return 0
    from safetensors.torch import save_file

    out = args.out
    (out / "loras").mkdir(parents=True, exist_ok=True)
    if args.from_model is None:
        save_model(pipe, out / "model")
        archive(out, args.archive)
    results = {} if args.no_eval else {"base": evaluate(pipe, None, sch.eval_seeds)}

    for k, style in enumerate(shapes.STYLES):
        if style not in styles:
            continue
        steps, rank, lr = sch.lora_plan(style)
        print(f"== lora {style} ({steps} steps, rank {rank})", flush=True)
        t0 = time.perf_counter()
        smean, sstd = encode(pipe.vae, styled[style], device)
        # Seeds by the style's place in STYLES, so a LoRA trained alone is the one a full run trains.
        torch.manual_seed(args.seed + 10 + k)
        cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(UNET_TARGETS), init_lora_weights=True)
        pipe.unet.add_adapter(cfg, adapter_name=style)
        pipe.unet.set_adapter(style)
        params = [p for n, p in pipe.unet.named_parameters() if f".{style}." in n]
        for prm in params:
            prm.requires_grad_(True)
        train_unet(
            pipe.unet,
            params,
            (smean, sstd),
            caption_idx,
            embeds,
            scaling,
            steps,
            sch.batch,
            lr,
            device,
            args.seed + 20 + k,
            f"lora {style}",
        )
        timings[f"lora {style}"] = time.perf_counter() - t0
        for prm in params:
            prm.requires_grad_(False)
        sd = unet_lora_state_dict(pipe.unet, style)
        meta = {"loraplex.drawing.style": style, "rank": str(rank)}
        save_file(sd, str(out / "loras" / f"{style}.safetensors"), meta)
        save_file(
            peft_to_kohya(sd, pipe.unet.config.layers_per_block, alpha=float(rank)),
            str(out / "loras" / f"{style}.kohya.safetensors"),
            meta,
        )
        archive(out, args.archive)
        if not args.no_eval:
            results[style] = evaluate(pipe, style, sch.eval_seeds)
        pipe.unet.delete_adapters(style)
    timings["total"] = time.perf_counter() - t_all

    print_tables(results, timings, device, sch)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "timings": timings, "device": str(device)}, indent=2))
    return 0


def save_model(pipe, directory: Path) -> None:
    """The pipeline as a diffusers directory with fp16 weights (the pipeline itself is left as it was)."""
    import copy

    shipped = copy.deepcopy(pipe).to("cpu").to(torch.float16)
    shipped.save_pretrained(directory, safe_serialization=True)


def archive(out: Path, target: Path | None) -> None:
    """Tar `out` to `target` (written whole, then renamed over the last one)."""
    if target is None:
        return
    import tarfile

    tmp = target.with_suffix(".part")
    with tarfile.open(tmp, "w") as tar:
        tar.add(out, arcname=".")
    tmp.replace(target)


def print_tables(
    results: dict[str, dict[str, float]], timings: dict[str, float], device, sch: Schedule, title: str = ""
) -> None:
    n = len(shapes.all_captions()) * sch.eval_seeds
    print(f"\n{title or f'training time on {device} (s), batch {sch.batch}'}")
    for k, v in timings.items():
        print(f"  {k:<16} {v:8.1f}")
    if not results:
        return
    print(f"\naccuracy judged from pixels: {n} pictures per row ({SAMPLE_STEPS} steps, guidance 5)")
    cols = ("shape", "colour", "fill", "background", "all")
    print(f"  {'model':<16}" + "".join(f"{c:>12}" for c in cols))
    for name, r in results.items():
        label = name if name == "base" else f"+ {name}"
        print(f"  {label:<16}" + "".join(f"{100 * r[c]:11.0f}%" for c in cols))


if __name__ == "__main__":
    raise SystemExit(main())
