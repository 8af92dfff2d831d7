"""Prepared adapters on disk: a slot's rows in one safetensors file, read straight into a slot.

An adapter file in its original format needs key mapping, transposes and
casts before it fits a slot (`SlotEngine.prepare`). Saving the prepared
[rank, D] block once lets every later disk -> slot load be a single read of
exactly those bytes into the slot's rows (CPU) or into pinned memory and one
copy (CUDA): no per-tensor work, no intermediate state dict.

A prepared file only fits engines with the same layout (base model, target
modules, order, dtype); its metadata carries a fingerprint of that layout
and a file for another layout is refused.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from .adapter_format import AdapterFormatError, check_safetensors_header
from .slot_engine import AdapterMismatchError, PreparedAdapter, SlotEngine

TENSOR = "slot_rows"
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def layout_fingerprint(engine: SlotEngine) -> str:
    """Identifies the slot layout: module order and sizes and the dtype (not the slot count or max rank)."""
    h = hashlib.sha256(str(engine.dtype).encode())
    for lay in engine.layouts.values():
        h.update(f"{lay.name}:{lay.in_features}:{lay.out_features};".encode())
    return h.hexdigest()[:24]


def save_prepared(engine: SlotEngine, prepared: PreparedAdapter, path: Path) -> Path:
    """Write the prepared rows atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    meta = {"loraplex_layout": layout_fingerprint(engine), "rank": str(prepared.rank),
            "modules": str(prepared.modules)}
    save_file({TENSOR: prepared.flat.cpu().contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def _open(engine: SlotEngine, path: Path) -> tuple[int, int, int]:
    """Validate a prepared file; return (rank, modules, data offset)."""
    header = check_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("loraplex_layout") != layout_fingerprint(engine):
        raise AdapterMismatchError(f"{path.name} was prepared for another slot layout (base model, targets or dtype)")
    info = header.get(TENSOR)
    if not isinstance(info, dict) or len(header) != 2:
        raise AdapterFormatError(f"{path.name} is not a prepared adapter file")
    rank, width = info.get("shape", [0, 0])
    if info.get("dtype") != _DTYPES.get(engine.dtype) or width != engine.width:
        raise AdapterMismatchError(f"{path.name}: {info.get('dtype')} {info.get('shape')} does not fit "
                                   f"this engine's [rank, {engine.width}] {engine.dtype} slots")
    if not 1 <= rank <= engine.max_rank:
        raise AdapterMismatchError(f"rank {rank} exceeds the pool's max rank {engine.max_rank}")
    start, end = info["data_offsets"]
    if end - start != rank * width * engine.storage.element_size():
        raise AdapterFormatError(f"{path.name}: tensor size does not match its shape")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return int(rank), int(meta.get("modules", 0)), 8 + n + start


def _read_into(path: Path, offset: int, dst: torch.Tensor) -> None:
    buf = memoryview(dst.view(torch.uint8).numpy()).cast("B")
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got = 0
        while got < len(buf):
            n = f.readinto(buf[got:])
            if not n:
                raise AdapterFormatError(f"{path.name} is truncated")
            got += n


def read_prepared(engine: SlotEngine, path: Path) -> PreparedAdapter:
    """Read a prepared file into RAM (pinned on CUDA), e.g. to refill the RAM tier without re-preparing."""
    rank, modules, offset = _open(engine, path)
    flat = torch.empty(rank, engine.width, dtype=engine.dtype, pin_memory=engine.device.type == "cuda")
    _read_into(path, offset, flat)
    return PreparedAdapter(flat=flat, rank=rank, modules=modules)


def load_prepared_file(engine: SlotEngine, slot: int, path: Path) -> int:
    """Disk -> slot in one read: straight into the slot's rows on CPU. Returns the adapter's rank."""
    rank, modules, offset = _open(engine, path)
    if engine.device.type == "cpu":
        _read_into(path, offset, engine.slot_rows(slot, rank))
        engine.mark_loaded(slot, rank)
    else:
        engine.load(slot, read_prepared(engine, path))
    return rank

