"""Parse and check generation requests against the worker's limits.

Both APIs (OpenAI images and the native one) become one `GenerationRequest`.
Every violation is an ApiError naming the field, raised before the request
reaches the queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inference_pod.worker.config import Limits
from loraplex.api.errors import ApiError

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_NATIVE_FIELDS = {
    "model",
    "prompt",
    "negative_prompt",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "seed",
    "adapters",
    "n",
    "size",
}
_OPENAI_FIELDS = {
    "model",
    "prompt",
    "n",
    "size",
    "response_format",
    "quality",
    "style",
    "user",
    "seed",
    "steps",
    "negative_prompt",
    "guidance_scale",
    "adapters",
}


@dataclass(frozen=True)
class AdapterUse:
    name: str
    scale: float | None  # None: the adapter's configured scale


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int | None
    n: int
    adapters: tuple[AdapterUse, ...]


def _int(body: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"{key} must be an integer", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {v}", param=key)
    return v


def _float(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(400, f"{key} must be a number", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"{key} must be between {lo} and {hi}, got {v}", param=key)
    return float(v)


def _str(body: dict, key: str, default: str | None, max_len: int) -> str:
    v = body.get(key, default)
    if v is None:
        raise ApiError(400, f"{key} is required", param=key)
    if not isinstance(v, str):
        raise ApiError(400, f"{key} must be a string", param=key)
    if len(v) > max_len:
        raise ApiError(400, f"{key} is longer than {max_len} characters", param=key)
    return v


def _dim(value: int, key: str, hi: int) -> int:
    if value % 8 or not 8 <= value <= hi:
        raise ApiError(400, f"{key} must be a multiple of 8 between 8 and {hi}, got {value}", param=key)
    return value


def _adapters(body: dict, max_n: int) -> tuple[AdapterUse, ...]:
    raw = body.get("adapters", [])
    if not isinstance(raw, list):
        raise ApiError(400, "adapters must be a list of {name, scale}", param="adapters")
    if len(raw) > max_n:
        raise ApiError(400, f"at most {max_n} adapters per request", param="adapters")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ApiError(400, f"adapters[{i}].name must be a string", param=f"adapters[{i}].name")
        unknown = set(item) - {"name", "scale"}
        if unknown:
            raise ApiError(400, f"adapters[{i}]: unknown field {sorted(unknown)[0]}", param=f"adapters[{i}]")
        scale = item.get("scale")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or abs(scale) > 10):
            raise ApiError(400, f"adapters[{i}].scale must be a number in [-10, 10]", param=f"adapters[{i}].scale")
        out.append(AdapterUse(item["name"], None if scale is None else float(scale)))
    return tuple(out)


def parse_request(
    body: Any, limits: Limits, *, openai: bool, default_steps: int, default_size: int
) -> GenerationRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    allowed = _OPENAI_FIELDS if openai else _NATIVE_FIELDS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}", param=unknown[0])
    model = _str(body, "model", None, 256)
    prompt = _str(body, "prompt", None, limits.max_prompt_chars)
    negative = _str(body, "negative_prompt", "", limits.max_prompt_chars)
    steps = _int(body, "steps", min(default_steps, limits.max_steps), 1, limits.max_steps)
    guidance = _float(body, "guidance_scale", 5.0, 0.0, 30.0)
    width = height = default_size
    if "size" in body:
        m = _SIZE.match(body["size"]) if isinstance(body["size"], str) else None
        if not m:
            raise ApiError(400, "size must look like '1024x1024'", param="size")
        width, height = int(m.group(1)), int(m.group(2))
    width = _int(body, "width", width, 8, limits.max_width) if "width" in body else width
    height = _int(body, "height", height, 8, limits.max_height) if "height" in body else height
    width = _dim(width, "width" if "width" in body else "size", limits.max_width)
    height = _dim(height, "height" if "height" in body else "size", limits.max_height)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ApiError(400, "seed must be a non-negative integer", param="seed")
    n = _int(body, "n", 1, 1, limits.max_images)
    if openai and body.get("response_format", "b64_json") != "b64_json":
        raise ApiError(
            400, "response_format must be 'b64_json' (this server does not host image URLs)", param="response_format"
        )
    return GenerationRequest(
        model=model,
        prompt=prompt,
        negative_prompt=negative,
        steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        seed=seed,
        n=n,
        adapters=_adapters(body, limits.max_adapters_per_request),
    )
