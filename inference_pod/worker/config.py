"""Worker configuration: the base model, adapter tier budgets and request limits."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from loraplex.api.open_catalog import OpenCatalogPolicy, parse_policy


@dataclass
class Limits:
    max_steps: int = 50
    max_width: int = 1024
    max_height: int = 1024
    max_prompt_chars: int = 2000
    max_body_bytes: int = 1 << 20
    max_images: int = 4
    queue_size: int = 16
    deadline_s: float = 300.0
    max_adapters_per_request: int = 3


@dataclass
class WorkerConfig:
    model: str = "tiny"
    revision: str | None = None
    dtype: str = "auto"  # auto: fp16 on cuda, fp32 on cpu
    family: str = "auto"  # the family the pool declares; auto: whatever the model is
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8081
    table: Path | None = None
    gpu_slots: int = 4
    max_rank: int = 64
    ram_cache_mb: int = 2048
    disk_cache_mb: int = 20480
    disk_cache_dir: Path = field(default_factory=lambda: Path(os.environ.get("LORAPLEX_CACHE", "/tmp/loraplex-cache")))
    max_adapter_mb: int = 512
    target_modules: tuple[str, ...] = ()  # (): the model family's targets (families.ModelFamily.targets)
    text_encoder_lora: bool = False
    torch_threads: int = 0  # 0: torch's default
    default_steps: int = 25
    default_size: int = 0  # 0: the model's native size
    warmup: bool = True
    hop_key_file: Path | None = None  # the pod's hop keys: a route header must be signed with one
    allow_private_sources: bool = False  # URL sources on loopback/private/link-local addresses (tests, local stack)
    adapter_path_roots: tuple[Path, ...] = ()  # path sources must resolve under one of these (default: --table's dir)
    adapter_ca_file: Path | None = None  # PEM CAs https sources are verified against, besides the system's
    fetch_connect_timeout_s: float = 10.0
    fetch_first_byte_timeout_s: float = 30.0
    fetch_total_timeout_s: float = 600.0
    fetch_min_bytes_per_s: float = 64 * 1024
    fetch_attempts: int = 3  # tries of a URL download that failed transiently (5xx, reset, cut short)
    open_catalog: OpenCatalogPolicy | None = None  # hub adapters served on demand (None: registered ones only)
    limits: Limits = field(default_factory=Limits)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraplex worker", description="The diffusion worker of an inference pod.")
    d = WorkerConfig()
    lim = Limits()
    p.add_argument(
        "--model",
        default=d.model,
        help="'tiny' (SDXL, random weights), 'tiny-flux' (FLUX, random weights), 'drawing' (SDXL, draws shapes), "
        "a local diffusers directory, or a hub model id; the family (SDXL or FLUX) is read from the model",
    )
    p.add_argument("--revision", default=None, help="hub revision (pin a commit in production)")
    p.add_argument("--dtype", default=d.dtype, choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument(
        "--family",
        default=d.family,
        choices=["auto", "sdxl", "flux"],
        help="the model family the pool declares: the worker refuses to start on a model of another family",
    )
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--host", default=d.host, help="listen address: a loopback address (behind the sidecar)")
    p.add_argument(
        "--hop-key-file",
        type=Path,
        default=None,
        help="the keys the sidecar signs requests with (same file as the sidecar's --hop-key-file); "
        "without it, X-Loraplex-Route headers are refused and only --table adapters are served",
    )
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--table", type=Path, default=None, help="routing table JSON file naming the adapters")
    p.add_argument(
        "--allow-private-sources",
        action="store_true",
        help="let URL sources reach loopback, private and link-local addresses (tests and the local stack only)",
    )
    p.add_argument(
        "--adapter-path-root",
        action="append",
        type=Path,
        default=[],
        help="a directory path sources may name files under (repeatable; default: the --table file's directory; "
        "none: path sources are refused)",
    )
    p.add_argument(
        "--adapter-ca-file",
        type=Path,
        default=None,
        help="PEM bundle of CA certificates that https adapter sources are also verified against (besides the "
        "system CAs), e.g. a private CA of an artifact server inside the cluster",
    )
    p.add_argument("--fetch-connect-timeout", type=float, default=d.fetch_connect_timeout_s)
    p.add_argument("--fetch-first-byte-timeout", type=float, default=d.fetch_first_byte_timeout_s)
    p.add_argument("--fetch-total-timeout", type=float, default=d.fetch_total_timeout_s)
    p.add_argument(
        "--fetch-min-bytes-per-s", type=float, default=d.fetch_min_bytes_per_s, help="after a 10 s grace period"
    )
    p.add_argument(
        "--fetch-attempts",
        type=int,
        default=d.fetch_attempts,
        help="attempts of a URL download that failed with a 5xx, a refused or reset connection or a short body "
        "(within the fetch's time limits and the request deadline; never for a 4xx, a timeout, the size cap or a "
        "hash/format error)",
    )
    p.add_argument(
        "--open-catalog",
        default=None,
        metavar="JSON",
        help="serve hub adapters on demand under this policy (the pool's spec.openCatalog as JSON: allowOwners, "
        "denyRepos, baseModels, requiredTag, maxFileBytes, useToken, TTLs, endpoint); absent or enabled=false: off",
    )
    p.add_argument("--gpu-slots", type=int, default=d.gpu_slots)
    p.add_argument("--max-rank", type=int, default=d.max_rank)
    p.add_argument("--ram-cache-mb", type=int, default=d.ram_cache_mb)
    p.add_argument("--disk-cache-mb", type=int, default=d.disk_cache_mb)
    p.add_argument("--disk-cache-dir", type=Path, default=d.disk_cache_dir)
    p.add_argument("--max-adapter-mb", type=int, default=d.max_adapter_mb)
    p.add_argument(
        "--target-modules",
        default=",".join(d.target_modules),
        help="comma-separated Linear module name suffixes that adapters may target (default: the model family's: "
        "SDXL UNet attention projections; FLUX transformer attention, MLP and modulation linears)",
    )
    p.add_argument("--text-encoder-lora", action="store_true", help="also apply LoRA layers to the text encoders")
    p.add_argument(
        "--torch-threads", type=int, default=int(os.environ.get("LORAPLEX_TORCH_THREADS", str(d.torch_threads)))
    )
    p.add_argument("--default-steps", type=int, default=d.default_steps)
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--hf-home", default=None, help="HF_HOME for the base model cache (a volume in a pod)")
    for f in fields(Limits):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(lim, f.name)), default=getattr(lim, f.name))
    return p


def config_from_args(argv: list[str] | None = None) -> WorkerConfig:
    p = build_parser()
    a = p.parse_args(argv)
    if not _is_loopback(a.host):
        p.error(f"--host {a.host}: the worker listens on loopback only (clients reach it through the sidecar)")
    if a.hf_home:
        os.environ["HF_HOME"] = a.hf_home
    limits = Limits(**{f.name: getattr(a, f.name) for f in fields(Limits)})
    if a.adapter_ca_file is not None:
        from inference_pod.adapters.sources import CaBundleError, tls_context

        try:
            tls_context(a.adapter_ca_file)  # fail at start, not at the first download
        except CaBundleError as e:
            p.error(f"--adapter-ca-file: {e}")
    open_catalog = None
    if a.open_catalog:
        try:
            open_catalog = parse_policy(a.open_catalog)
        except ValueError as e:
            p.error(f"--open-catalog: {e}")
    return WorkerConfig(
        open_catalog=open_catalog if open_catalog is not None and open_catalog.enabled else None,
        model=a.model,
        revision=a.revision,
        dtype=a.dtype,
        family=a.family,
        device=a.device,
        host=a.host,
        port=a.port,
        table=a.table,
        gpu_slots=a.gpu_slots,
        max_rank=a.max_rank,
        ram_cache_mb=a.ram_cache_mb,
        disk_cache_mb=a.disk_cache_mb,
        disk_cache_dir=a.disk_cache_dir,
        max_adapter_mb=a.max_adapter_mb,
        target_modules=tuple(s.strip() for s in a.target_modules.split(",") if s.strip()),
        text_encoder_lora=a.text_encoder_lora,
        torch_threads=a.torch_threads,
        default_steps=a.default_steps,
        warmup=not a.no_warmup,
        hop_key_file=a.hop_key_file,
        allow_private_sources=a.allow_private_sources,
        adapter_path_roots=tuple(a.adapter_path_root) or ((a.table.resolve().parent,) if a.table else ()),
        adapter_ca_file=a.adapter_ca_file,
        fetch_connect_timeout_s=a.fetch_connect_timeout,
        fetch_first_byte_timeout_s=a.fetch_first_byte_timeout,
        fetch_total_timeout_s=a.fetch_total_timeout,
        fetch_min_bytes_per_s=a.fetch_min_bytes_per_s,
        fetch_attempts=a.fetch_attempts,
        limits=limits,
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
