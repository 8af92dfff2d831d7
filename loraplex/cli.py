"""The one `loraplex` command: the local stack, the worker, the sidecar, the operator, a test request, the
fleet simulator and the capacity planner.

Each subcommand imports its side (`inference_pod` or `loraplex_operator`) only when it runs, so the command works
in an image that installs one side only (`loraplex[operator]` or `loraplex[inference]`). Benchmarks are scripts in
the source checkout's benchmarks/ (`./dev bench NAME`), not part of the installed command.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from loraplex.api import headers as hdr


def _generate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="loraplex generate", description="Send one generation request.")
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", required=True, help="adapter name/alias or base model")
    p.add_argument("--prompt", required=True)
    p.add_argument("--steps", type=int)
    p.add_argument("--size", help="WxH, e.g. 64x64")
    p.add_argument("--seed", type=int)
    p.add_argument("--adapter", action="append", default=[], help="extra adapter NAME[:SCALE] (repeatable)")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--out", default="out.png")
    a = p.parse_args(argv)
    body: dict = {"model": a.model, "prompt": a.prompt}
    if a.steps:
        body["steps"] = a.steps
    if a.size:
        body["size"] = a.size
    if a.seed is not None:
        body["seed"] = a.seed
    if a.adapter:
        body["adapters"] = [
            {"name": n, **({"scale": float(s)} if s else {})} for n, _, s in (x.partition(":") for x in a.adapter)
        ]
    headers = {"Content-Type": "application/json"}
    if a.token:
        headers["Authorization"] = f"Bearer {a.token}"
    req = urllib.request.Request(
        a.url.rstrip("/") + "/v1/images/generations", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            data = json.load(r)
            timing = {k: v for k, v in r.headers.items() if k.lower().startswith(hdr.PREFIX.lower())}
    except urllib.error.HTTPError as e:
        print(f"HTTP {e.code}: {e.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    Path(a.out).write_bytes(base64.b64decode(data["data"][0]["b64_json"]))
    print(json.dumps({"saved": a.out, **timing}, indent=2))
    return 0


def _local(argv: list[str]) -> int:
    from inference_pod.local.stack import run_local

    p = argparse.ArgumentParser(
        prog="loraplex local",
        description="The local stack: the drawing model, its LoRAs, worker + sidecar on loopback.",
    )
    p.add_argument("--workdir", type=Path, default=Path("out/local"))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--serve", action="store_true", help="keep serving after the demo requests")
    p.add_argument("--flux", action="store_true", help="also a FLUX pool (tiny-flux) beside the SDXL one")
    a = p.parse_args(argv)
    return run_local(a.workdir.resolve(), steps=a.steps, size=a.size, keep_running=a.serve, flux=a.flux)


def _worker(argv: list[str]) -> int:
    from inference_pod.worker.server import main

    main(argv)
    return 0


def _sidecar(argv: list[str]) -> int:
    from inference_pod.router.sidecar import main

    return main(argv) or 0


def _operator(argv: list[str]) -> int:
    try:
        from loraplex_operator.__main__ import main
    except ImportError as e:
        print(f"the operator is not installed: {e}", file=sys.stderr)
        return 2
    return main(argv) or 0


def _sim(argv: list[str]) -> int:
    from loraplex.sim.cli import main

    return main(["sim", *argv]) or 0


def _plan(argv: list[str]) -> int:
    from loraplex.sim.cli import main

    return main(["plan", *argv]) or 0


COMMANDS = {
    "local": (_local, "run the local stack (drawing model, its LoRAs, worker + sidecar on loopback)"),
    "generate": (_generate, "send a generation request and save the PNG"),
    "worker": (_worker, "run the diffusion worker"),
    "sidecar": (_sidecar, "run the router sidecar (or, without --worker-url, the gateway)"),
    "operator": (_operator, "run the Kubernetes operator"),
    "sim": (_sim, "simulate a fleet of pools on a day of traffic (docs/fleet-sim.md)"),
    "plan": (_plan, "recommend pool settings for your traffic and a p95 target (docs/fleet-sim.md)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: loraplex COMMAND [args]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:10s} {help_text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    fn, _ = COMMANDS[argv[0]]
    return fn(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
