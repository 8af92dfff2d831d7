"""Prepared adapters on disk: a slot's rows in one safetensors file, read straight into a slot.

An adapter file in its original format needs key mapping, transposes and
casts before it fits a slot (`SlotEngine.prepare`). Saving the prepared
[rank, D] block once lets every later disk -> slot load be a single read of
exactly those bytes into the slot's rows (CPU) or into pinned memory and one
copy (CUDA): no per-tensor work, no intermediate state dict.

A compact adapter (one covering only some of the pool's modules) is saved
compact, its column spans in the metadata; reading it back is one read plus
one copy per span.

A prepared file only fits engines with the same layout (base model, target
modules, order, dtype); its metadata carries a fingerprint of that layout
and a file for another layout is refused.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import save_file

from inference_pod.adapters.formats import SAFETENSORS_MAX_HEADER, AdapterFormatError
from inference_pod.slots import host_memory
from inference_pod.slots.engine import AdapterMismatchError, PreparedAdapter, SlotEngine

TENSOR = "slot_rows"
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def layout_fingerprint(engine: SlotEngine) -> str:
    """Identifies the slot layout: module order and sizes and the dtype (not the slot count or max rank)."""
    return engine.fingerprint


def save_prepared(engine: SlotEngine, prepared: PreparedAdapter, path: Path) -> Path:
    """Write the prepared rows atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    meta = {"loraplex_layout": engine.fingerprint, "rank": str(prepared.rank), "modules": str(prepared.modules)}
    if prepared.spans is not None:
        meta["spans"] = json.dumps(prepared.spans)
    save_file({TENSOR: prepared.flat.cpu().contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def _spans(engine: SlotEngine, raw: object, name: str) -> tuple[tuple[int, int], ...] | None:
    """A compact file's column spans, checked to be ordered, disjoint and inside a slot row."""
    if raw is None:
        return None
    try:
        spans = tuple((int(a), int(b)) for a, b in json.loads(str(raw)))
    except (ValueError, TypeError) as e:
        raise AdapterFormatError(f"{name}: malformed spans metadata") from e
    prev = 0
    for a, b in spans:
        if not prev <= a < b <= engine.width:
            raise AdapterFormatError(f"{name}: spans metadata out of order or outside the slot row")
        prev = b
    return spans


def _open(engine: SlotEngine, path: Path) -> tuple[BinaryIO, int, int, tuple[tuple[int, int], ...] | None]:
    """Open and validate a prepared file; return (file positioned at the data, rank, modules, spans).

    One open and one small read before the data: this is the disk -> slot path.
    """
    if path.suffix != ".safetensors":
        raise AdapterFormatError(f"{path.name}: prepared adapters are .safetensors files")
    f = open(path, "rb", buffering=0)  # noqa: SIM115 - handed to the caller, closed there
    try:
        head = f.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
        if not 1 < n <= SAFETENSORS_MAX_HEADER:
            raise AdapterFormatError(f"{path.name}: corrupt safetensors header")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AdapterFormatError(f"{path.name}: corrupt safetensors header: {e}") from e
        meta = header.get("__metadata__") or {}
        if meta.get("loraplex_layout") != engine.fingerprint:
            raise AdapterMismatchError(
                f"{path.name} was prepared for another slot layout (base model, targets or dtype)"
            )
        info = header.get(TENSOR)
        if not isinstance(info, dict) or len(header) != 2:
            raise AdapterFormatError(f"{path.name} is not a prepared adapter file")
        rank, width = info.get("shape", [0, 0])
        spans = _spans(engine, meta.get("spans"), path.name)
        want_width = engine.width if spans is None else sum(b - a for a, b in spans)
        if info.get("dtype") != _DTYPES.get(engine.dtype) or width != want_width:
            raise AdapterMismatchError(
                f"{path.name}: {info.get('dtype')} {info.get('shape')} does not fit "
                f"this engine's [rank, {engine.width}] {engine.dtype} slots"
            )
        if not 1 <= rank <= engine.max_rank:
            raise AdapterMismatchError(f"rank {rank} exceeds the pool's max rank {engine.max_rank}")
        start, end = info["data_offsets"]
        if start != 0 or end != rank * width * engine.storage.element_size():
            raise AdapterFormatError(f"{path.name}: tensor size does not match its shape")
        return f, int(rank), int(meta.get("modules", 0)), spans
    except BaseException:
        f.close()
        raise


def _read_into(f: BinaryIO, dst: torch.Tensor, name: str) -> None:
    buf = memoryview(dst.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])  # type: ignore[attr-defined]  # real files are BufferedReader
        if not n:
            raise AdapterFormatError(f"{name} is truncated")
        got += n


def read_prepared(engine: SlotEngine, path: Path) -> PreparedAdapter:
    """Read a prepared file into RAM (pinned on CUDA), e.g. to refill the RAM tier without re-preparing."""
    f, rank, modules, spans = _open(engine, path)
    width = engine.width if spans is None else sum(b - a for a, b in spans)
    with f:
        if engine.device.type == "cuda":
            flat = torch.empty(rank, width, dtype=engine.dtype, pin_memory=True)
        else:
            flat = host_memory.zeros((rank, width), engine.dtype)
        _read_into(f, flat, path.name)
    return PreparedAdapter(flat=flat, rank=rank, modules=modules, spans=spans)


def load_prepared_file(engine: SlotEngine, slot: int, path: Path) -> int:
    """Disk -> slot in one read: straight into the slot's rows on CPU (a compact file: read, then one copy per
    span). Returns the adapter's rank."""
    if engine.device.type != "cpu":
        prepared = read_prepared(engine, path)
        engine.load(slot, prepared)
        return prepared.rank
    f, rank, _, spans = _open(engine, path)
    if spans is not None:
        f.close()
        prepared = read_prepared(engine, path)
        engine.load(slot, prepared)
        return prepared.rank
    with f:
        try:
            _read_into(f, engine.slot_rows(slot, rank), path.name)
        except BaseException:
            engine.clear(slot)  # half an adapter must never be applied
            raise
    engine.mark_loaded(slot, rank)
    return rank
