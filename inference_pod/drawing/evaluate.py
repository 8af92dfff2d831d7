"""Measure the shipped drawing model and LoRAs: every caption drawn with a few seeds, judged from the pixels.

    python -m inference_pod.drawing.evaluate [--seeds N] [--threads N] [--weights DIR]

Loads the files as shipped (weights/model, weights/loras/<style>.safetensors through diffusers' own LoRA loader),
or a training's --out DIR, and prints the table the trainer prints: per row, how often the shape, the colour, the
fill and the background come out as the caption (and the LoRA's style) ask.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from inference_pod.drawing.model import LORA_STYLES, WEIGHTS_DIR, load_trained, lora_path, model_dir
from inference_pod.drawing.train import Schedule, evaluate, print_tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inference_pod.drawing.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="a training's --out directory (default: shipped)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_trained(model_dir(args.weights))
    t0 = time.perf_counter()
    results = {"base": evaluate(pipe, None, args.seeds)}
    for style in LORA_STYLES:
        pipe.load_lora_weights(str(lora_path(style, root=args.weights)), adapter_name=style)
        pipe.set_adapters([style], [1.0])
        results[style] = evaluate(pipe, style, args.seeds)
        pipe.delete_adapters(style)
    took = {"evaluation": time.perf_counter() - t0}
    print_tables(results, took, "cpu", Schedule(eval_seeds=args.seeds), title="evaluation time on cpu (s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
