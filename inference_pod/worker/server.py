"""The diffusion worker: one pipeline, the adapter tiers and the HTTP API.

Routes: POST /v1/images/generations (OpenAI images shape), POST /v1/generate
(PNG with timing headers), GET /v1/adapters, GET /v1/resident (which adapters
are held in which tier, bounded: the sidecar's `/v1/stats` carries it to the
operator), POST /v1/adapters/{name}/prefetch, /healthz, /readyz, /metrics.
It listens on loopback behind the sidecar, which passes each adapter's
routing entry in the X-Loraplex-Route header.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_pod.adapters.open_catalog import OpenCatalog, OpenCatalogError
from inference_pod.adapters.sources import SourcePolicy
from inference_pod.adapters.tiers import AdapterError, AdapterTiers, TierBudgets, cold_tier
from inference_pod.families import FAMILIES, FLUX, SDXL, ModelFamily, family_of_pipeline
from inference_pod.slots.engine import AdapterMismatchError, SlotEngine
from inference_pod.worker.config import WorkerConfig, config_from_args
from inference_pod.worker.jobs import DeadlineExceeded, GpuJobQueue, QueueFull
from inference_pod.worker.metrics import WorkerMetrics
from inference_pod.worker.pipeline import load_pipeline
from inference_pod.worker.request import GenerationRequest, parse_request
from loraplex.api import headers as hdr
from loraplex.api.errors import ApiError
from loraplex.api.hopauth import HopAuthError, HopKeys
from loraplex.api.routing_table import AdapterEntry, TableError, parse_table
from loraplex.identity import ensure_user_name
from loraplex.logs import setup_logging

log = logging.getLogger("loraplex.worker")
BASE_NAMES = ("base",)
RESIDENT_LIMIT = 1000  # names per /v1/resident answer unless asked for fewer
RESIDENT_LIMIT_MAX = 10000


class Worker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.metrics = WorkerMetrics()
        self.jobs = GpuJobQueue(cfg.limits.queue_size)
        self.metrics.queue_capacity.set(cfg.limits.queue_size + 1)  # the queue plus the running job
        self.ready = False
        self.pipe: Any = None  # a diffusers pipeline once loaded
        self.engine: SlotEngine | None = None
        self.family: ModelFamily = SDXL
        self.tiers: AdapterTiers | None = None
        self.base_names: set[str] = {cfg.model, *BASE_NAMES}
        self.aliases: dict[str, str] = {}
        self._table_stamp: tuple[float, int] | None = None
        self._table_checked = float("-inf")
        self.hop_keys = HopKeys(cfg.hop_key_file) if cfg.hop_key_file else None
        self.open_catalog = (
            OpenCatalog(cfg.open_catalog, [cfg.model], cfg.max_adapter_mb << 20, timeout_s=cfg.fetch_connect_timeout_s)
            if cfg.open_catalog is not None
            else None
        )

    # -- start-up -------------------------------------------------------------------------------------

    def load(self) -> None:
        cfg = self.cfg
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.pipe, self.device, self.dtype = load_pipeline(cfg.model, cfg.revision, cfg.dtype, cfg.device)
        fam = self.family = family_of_pipeline(self.pipe)
        if cfg.family not in ("auto", fam.name):
            raise ValueError(
                f"--model {cfg.model} is a {fam.label} model ({type(self.pipe).__name__}); the pool declares "
                f"{FAMILIES[cfg.family].label} (spec.model.pipeline: {cfg.family})"
            )
        components: tuple[str, ...] = (fam.denoiser,)
        target = cfg.target_modules or fam.targets
        if cfg.text_encoder_lora:
            components = (fam.denoiser, *fam.text_encoders)
            target = (*target, *fam.text_encoder_targets)
        self.engine = SlotEngine(
            self.pipe,
            n_slots=cfg.gpu_slots,
            max_rank=cfg.max_rank,
            target_suffixes=target,
            components=components,
            max_active=cfg.limits.max_adapters_per_request,
        )
        budgets = TierBudgets(
            gpu_slots=cfg.gpu_slots,
            ram_bytes=cfg.ram_cache_mb << 20,
            disk_bytes=cfg.disk_cache_mb << 20,
            max_adapter_bytes=cfg.max_adapter_mb << 20,
        )
        policy = SourcePolicy(
            allow_private=cfg.allow_private_sources,
            path_roots=cfg.adapter_path_roots,
            ca_file=cfg.adapter_ca_file,
            connect_timeout_s=cfg.fetch_connect_timeout_s,
            first_byte_timeout_s=cfg.fetch_first_byte_timeout_s,
            total_timeout_s=cfg.fetch_total_timeout_s,
            min_bytes_per_s=cfg.fetch_min_bytes_per_s,
            fetch_attempts=cfg.fetch_attempts,
            retry_within_s=cfg.limits.deadline_s,  # a retry is only worth starting while the client still waits
            hub_endpoint=cfg.open_catalog.endpoint if cfg.open_catalog else None,
        )
        unet_config = self.pipe.unet.config if fam == SDXL else None
        self.tiers = AdapterTiers(
            self.engine, budgets, cfg.disk_cache_dir, unet_config=unet_config, policy=policy, family=fam
        )
        if fam == FLUX:
            self.native_size = int(self.pipe.vae.config.sample_size)  # 1024 for FLUX.1's autoencoder
        else:
            self.native_size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.reload_table(force=True)
        if cfg.warmup:
            self._generate(
                GenerationRequest(
                    model=cfg.model,
                    prompt="warm up",
                    negative_prompt="",
                    steps=1,
                    guidance_scale=5.0,
                    width=self.native_size,
                    height=self.native_size,
                    seed=0,
                    n=1,
                    adapters=(),
                ),
                [],
            )
        self.ready = True
        log.info(
            "worker ready: model=%s (%s) device=%s dtype=%s slots=%d max_rank=%d slot=%.1f MB",
            cfg.model,
            fam.label,
            self.device,
            self.dtype,
            cfg.gpu_slots,
            cfg.max_rank,
            self.engine.slot_nbytes / 1e6,
        )

    def reload_table(self, force: bool = False) -> None:
        """Register the adapters of the --table file; re-read only when the file changed (checked once a second)."""
        path = self.cfg.table
        if path is None:
            return
        now = time.monotonic()
        if not force and now - self._table_checked < 1.0:
            return
        self._table_checked = now
        try:
            st = path.stat()
        except OSError:
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._table_stamp:
            return
        try:
            table = parse_table(path.read_bytes())
        except TableError as e:
            log.error("routing table %s is malformed, keeping the last good one: %s", path, e)
            return
        self._table_stamp = stamp
        for pool_name, pool in table.pools.items():
            self.base_names.update({pool_name, pool.base_model, *pool.aliases} - {""})
        for name, entry in table.adapters.items():
            self.register(name, entry)

    def register(self, name: str, entry: AdapterEntry) -> None:
        assert self.tiers is not None
        self.tiers.register(name, entry)
        for alias in entry.aliases:
            self.aliases[alias] = name

    # -- request handling ---------------------------------------------------------------------------

    def _apply_route_header(self, request: web.Request, body: bytes) -> tuple[bool, dict[str, str]]:
        """Register the adapters the sidecar resolved; (True when it resolved the model to the base model, the
        on-demand adapters named: name -> pool, to resolve through the open catalog before use).

        The route names adapter sources, so it is taken only from this pod's sidecar: signed with the hop key.
        """
        raw = request.headers.get(hdr.ROUTE)
        on_demand: dict[str, str] = {}
        if not raw:
            return False, on_demand
        try:
            if self.hop_keys is None:
                raise HopAuthError("this worker has no --hop-key-file")
            self.hop_keys.verify(
                request.headers.get(hdr.HOP_AUTH),
                request.method,
                request.path_qs,
                request.headers.get(hdr.HOP, ""),
                raw,
                body,
            )
        except HopAuthError as e:
            log.warning("refused a %s header from %s: %s", hdr.ROUTE, request.remote, e)
            raise ApiError(401, f"{hdr.ROUTE} refused: {e}", param=hdr.ROUTE, code="invalid_hop_signature") from None
        try:
            route = json.loads(raw)
            for name, raw_entry in route.get("adapters", {}).items():
                entry = AdapterEntry.model_validate(raw_entry)
                if entry.on_demand:  # only its name counts: the open catalog makes the entry (policy, hub)
                    on_demand[name] = entry.pool
                else:
                    self.register(name, entry)
            if route.get("pool"):
                self.base_names.add(route["pool"])
        except (ValueError, TypeError, AttributeError) as e:
            raise ApiError(400, f"malformed {hdr.ROUTE} header: {e}", param=hdr.ROUTE) from e
        return "model" in route and route["model"] is None, on_demand

    async def _resolve_on_demand(self, names: dict[str, str], param: str) -> None:
        """Resolve and register the on-demand adapters a route named (cached hub look-ups, off the loop)."""
        for name, pool in names.items():
            if self.open_catalog is None:
                raise ApiError(404, f"adapter {name!r}: this pool serves no adapters on demand", param=param)
            try:
                entry = await asyncio.to_thread(self.open_catalog.resolve, name, pool)
            except OpenCatalogError as e:
                raise ApiError(e.status, f"adapter {name!r}: {e.message}", param=param, code=e.code) from None
            self.register(name, entry)

    def _resolve(self, req: GenerationRequest, routed_to_base: bool = False) -> list[tuple[str, float]]:
        """The adapters a request uses, as (name, scale); empty for the base model alone."""
        assert self.tiers is not None
        uses: list[tuple[str, float]] = []
        model = self.aliases.get(req.model, req.model)
        if routed_to_base:
            pass  # the router resolved the name (a pool alias, say) to the base model
        elif model in self.tiers.catalog:
            uses.append((model, self.tiers.catalog[model].scale))
        elif req.model not in self.base_names:
            raise ApiError(404, f"model {req.model!r} is not served here", param="model")
        for i, use in enumerate(req.adapters):
            name = self.aliases.get(use.name, use.name)
            entry = self.tiers.catalog.get(name)
            if entry is None:
                raise ApiError(
                    404, f"adapters[{i}]: adapter {use.name!r} is not served here", param=f"adapters[{i}].name"
                )
            uses.append((name, entry.scale if use.scale is None else use.scale))
        names = [n for n, _ in uses]
        if len(set(names)) != len(names):
            raise ApiError(400, "the same adapter is named twice", param="adapters")
        if len(uses) > self.cfg.limits.max_adapters_per_request:
            raise ApiError(
                400, f"at most {self.cfg.limits.max_adapters_per_request} adapters per request", param="adapters"
            )
        return uses

    def _generate(
        self, req: GenerationRequest, uses: list[tuple[str, float]], fetched: dict[str, str] | None = None
    ) -> dict:
        """Runs on the GPU thread: swap adapters into slots, activate, diffuse, encode PNGs.

        `fetched`: the tier each adapter came from when this request fetched it into RAM before the job.
        """
        assert self.tiers is not None and self.engine is not None
        keep = frozenset(n for n, _ in uses)
        swaps = []
        for n, _ in uses:
            s = self.tiers.ensure_in_slot(n, keep)
            swaps.append(replace(s, tier=cold_tier(s.tier, (fetched or {}).get(n))))
        self.engine.activate([(s.slot, scale) for s, (_, scale) in zip(swaps, uses, strict=True)])
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if self.family == FLUX:
            # The T5 prompt sequence: at most what its tokenizer takes (512 for FLUX.1, 64 for tiny-flux).
            kwargs["max_sequence_length"] = min(512, int(self.pipe.tokenizer_2.model_max_length))
        with torch.inference_mode():
            images = self.pipe(
                prompt=req.prompt,
                negative_prompt=req.negative_prompt or None,
                num_inference_steps=req.steps,
                guidance_scale=req.guidance_scale,
                width=req.width,
                height=req.height,
                num_images_per_prompt=req.n,
                generator=generator,
                output_type="np",
                **kwargs,
            ).images
        infer_s = time.perf_counter() - t0
        if not np.isfinite(images).all():
            # Finite but huge weights overflow inside the model: the PNG would be all black. Name the culprit.
            names = [n for n, _ in uses]
            reason = "made the model's output non-finite (NaN/inf): its weights are out of range for this model"
            if len(names) == 1:
                self.tiers.mark_bad(names[0], 422, reason)  # remembered: fails fast until its source changes
                raise AdapterError(names[0], 422, reason)
            if names:  # which one is at fault is unknown: name them all, remember none (each alone will tell)
                raise AdapterError(", ".join(names), 422, reason.replace("made", "together made", 1))
            raise RuntimeError("the base model produced a non-finite image")
        images = self.pipe.numpy_to_pil(images)
        pngs = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            pngs.append(buf.getvalue())
        return {"pngs": pngs, "swaps": swaps, "inference_s": infer_s, "seed": seed}

    async def handle_generation(self, request: web.Request, openai: bool) -> web.Response:
        endpoint = "images" if openai else "generate"
        t_start = time.perf_counter()
        status = 500
        try:
            resp = await self._handle_generation(request, openai)
            status = resp.status
            return resp
        except ApiError as e:
            status = e.status
            return e.response()
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t_start)

    async def _handle_generation(self, request: web.Request, openai: bool) -> web.Response:
        if not self.ready:
            raise ApiError(503, "worker is still loading the base model")
        if request.content_length and request.content_length > self.cfg.limits.max_body_bytes:
            raise ApiError(413, f"body over {self.cfg.limits.max_body_bytes} bytes")
        try:
            raw_body = await request.read()
            body = json.loads(raw_body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from e
        except web.HTTPRequestEntityTooLarge as e:
            raise ApiError(413, f"body over {self.cfg.limits.max_body_bytes} bytes") from e
        req = parse_request(
            body, self.cfg.limits, openai=openai, default_steps=self.cfg.default_steps, default_size=self.native_size
        )
        if self.family == FLUX:
            multiple = self.pipe.vae_scale_factor * 2  # FLUX packs 2x2 latent patches into tokens
            for key, value in (("width", req.width), ("height", req.height)):
                if value % multiple:
                    param = key if key in body else "size"
                    raise ApiError(
                        400,
                        f"{param}: {key} must be a multiple of {multiple} for this FLUX model, got {value}",
                        param=param,
                    )
        if not openai and req.n != 1:
            raise ApiError(400, "n must be 1 for /v1/generate (use /v1/images/generations for several)", param="n")
        routed_to_base, on_demand = self._apply_route_header(request, raw_body)
        await self._resolve_on_demand(on_demand, "model" if not req.adapters else "adapters")
        self.reload_table()
        uses = self._resolve(req, routed_to_base)
        assert self.tiers is not None
        t_admit = time.monotonic()
        try:
            # Fetch beside the GPU job (a bounded pool): this request waits for its own adapters, others run on.
            for name, _ in uses:
                self.tiers.check_fresh(name)  # a path source replaced in place is reloaded
            # Shielded: a fetch is shared by every request for that adapter, and one request giving up (its
            # deadline) must not cancel a fetch the others still wait for.
            fetches = [asyncio.shield(asyncio.wrap_future(self.tiers.prefetch(name))) for name, _ in uses]
            fetched: dict[str, str] = {}
            if fetches:
                got = await asyncio.wait_for(asyncio.gather(*fetches), self.cfg.limits.deadline_s)
                fetched = {name: tier for (name, _), tier in zip(uses, got, strict=True)}
            # Time this request waited for adapter bytes (disk or source) before its job: routers learn a cold cost.
            fetch_s = time.monotonic() - t_admit if any(t in ("disk", "source") for t in fetched.values()) else 0.0
        except TimeoutError:
            raise ApiError(504, f"adapters not fetched within the deadline of {self.cfg.limits.deadline_s} s") from None
        except AdapterError as e:
            raise ApiError(e.status, str(e), param="model" if not req.adapters else "adapters") from e
        remaining_s = max(0.001, self.cfg.limits.deadline_s - (time.monotonic() - t_admit))
        try:
            out, queued_s = await self.jobs.submit(lambda: self._generate(req, uses, fetched), remaining_s)
        except QueueFull:
            raise ApiError(
                429, "the GPU queue is full; retry later", headers={"Retry-After": str(self.jobs.retry_after_s())}
            ) from None
        except DeadlineExceeded:
            raise ApiError(504, f"not finished within the deadline of {self.cfg.limits.deadline_s} s") from None
        except AdapterError as e:
            raise ApiError(e.status, str(e), param="model" if not req.adapters else "adapters") from e
        except AdapterMismatchError as e:
            raise ApiError(400, str(e), param="adapters") from e
        finally:
            self._refresh_gauges()
        swaps = out["swaps"]
        for s in swaps:
            self.metrics.swap.labels(s.tier).observe(s.seconds)
            self.metrics.cache_hits.labels(s.tier).inc()
        self.metrics.queue_wait.observe(queued_s)
        self.metrics.inference.observe(out["inference_s"])
        headers = {
            hdr.QUEUE_MS: f"{queued_s * 1e3:.2f}",
            hdr.SWAP_TIER: ",".join(s.tier for s in swaps) or "none",
            hdr.SWAP_MS: f"{sum(s.seconds for s in swaps) * 1e3:.3f}",
            hdr.FETCH_MS: f"{fetch_s * 1e3:.3f}",
            hdr.INFERENCE_MS: f"{out['inference_s'] * 1e3:.1f}",
            hdr.SEED: str(out["seed"]),
            hdr.ADAPTERS: ",".join(n for n, _ in uses) or "none",
        }
        if openai:
            data = [{"b64_json": base64.b64encode(p).decode()} for p in out["pngs"]]
            return web.json_response({"created": int(time.time()), "data": data}, headers=headers)
        return web.Response(body=out["pngs"][0], content_type="image/png", headers=headers)

    def _refresh_gauges(self) -> None:
        assert self.tiers is not None
        m = self.metrics
        m.queue_depth.set(self.jobs.depth)
        m.resident.labels("gpu").set(len(self.tiers.slots))
        m.resident.labels("ram").set(len(self.tiers.ram))
        m.resident.labels("disk").set(len(self.tiers.disk.lru))
        for tier, n in self.tiers.bytes_by_tier().items():
            m.tier_bytes.labels(tier).set(n)
        m.bad_adapters.set(len(self.tiers.bad))

    # -- other routes -------------------------------------------------------------------------------

    async def adapters(self, request: web.Request) -> web.Response:
        if self.tiers is None:
            return web.json_response({"adapters": []})
        self.reload_table()
        return web.json_response(
            {
                "adapters": self.tiers.describe(),
                "bytes": self.tiers.bytes_by_tier(),
                "slots": self.cfg.gpu_slots,
                "maxRank": self.cfg.max_rank,
            }
        )

    async def resident(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", str(RESIDENT_LIMIT))
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if not 0 <= limit <= RESIDENT_LIMIT_MAX:
            return ApiError(400, f"limit must be an integer from 0 to {RESIDENT_LIMIT_MAX}", param="limit").response()
        if self.tiers is None:
            empty = {"gpu": [], "ram": [], "disk": [], "counts": {"gpu": 0, "ram": 0, "disk": 0}, "truncated": False}
            return web.json_response(empty)
        self.reload_table()
        return web.json_response(self.tiers.resident(limit))

    async def prefetch(self, request: web.Request) -> web.Response:
        if self.tiers is None:
            return ApiError(503, "worker is still loading").response()
        try:
            _, on_demand = self._apply_route_header(request, await request.read())
            await self._resolve_on_demand(on_demand, "name")
            self.reload_table()
            name = self.aliases.get(request.match_info["name"], request.match_info["name"])
            if name not in self.tiers.catalog:
                raise ApiError(404, f"adapter {name!r} is not served here", param="name")
            tier = await asyncio.wrap_future(self.tiers.prefetch(name))
        except ApiError as e:
            return e.response()
        except AdapterError as e:
            return ApiError(e.status, str(e), param="name").response()
        self._refresh_gauges()
        return web.json_response({"name": name, "from": tier, "tier": self.tiers.tier_of(name)})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _readiness(self) -> dict[str, Any]:
        """The /readyz document; `status` is "ready", "loading" or "stuck"."""
        if not self.ready:
            return {"status": "loading"}
        running = self.jobs.running
        if running is not None and running.started is not None:
            busy_s = time.monotonic() - running.started
            if busy_s > self.cfg.limits.deadline_s:  # no job may take this long: the GPU thread is stuck
                return {"status": "stuck", "jobSeconds": round(busy_s, 1)}
        return {"status": "ready", "model": self.cfg.model, "family": self.family.name, "queue": self.jobs.depth}

    async def readyz(self, request: web.Request) -> web.Response:
        doc = self._readiness()
        return web.json_response(doc, status=200 if doc["status"] == "ready" else 503)

    async def metrics_route(self, request: web.Request) -> web.Response:
        self.metrics.ready.set(1 if self._readiness()["status"] == "ready" else 0)
        self.metrics.queue_depth.set(self.jobs.depth)
        if self.tiers is not None:
            self._refresh_gauges()
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.limits.max_body_bytes)
        app.router.add_post("/v1/images/generations", lambda r: self.handle_generation(r, openai=True))
        app.router.add_post("/v1/generate", lambda r: self.handle_generation(r, openai=False))
        app.router.add_get("/v1/adapters", self.adapters)
        app.router.add_get("/v1/resident", self.resident)
        app.router.add_post("/v1/adapters/{name}/prefetch", self.prefetch)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_route)

        async def on_startup(_app: web.Application) -> None:
            self.jobs.start()
            # Load in a thread so /healthz answers while the base model loads.
            asyncio.get_running_loop().run_in_executor(None, self._load_logged)

        async def on_cleanup(_app: web.Application) -> None:
            await self.jobs.close()
            if self.tiers:
                self.tiers.close()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app

    def _load_logged(self) -> None:
        try:
            self.load()
        except Exception:
            log.exception("loading the base model failed")
            # A worker that cannot load its model must not look alive.
            os._exit(3)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    ensure_user_name()  # torch's compile cache calls getpass.getuser()
    cfg = config_from_args(argv)
    Path(cfg.disk_cache_dir).mkdir(parents=True, exist_ok=True)
    worker = Worker(cfg)
    web.run_app(worker.app(), host=cfg.host, port=cfg.port, print=None, shutdown_timeout=cfg.limits.deadline_s)
