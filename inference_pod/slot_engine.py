"""The slot engine: LoRA layers installed once, adapters switched by slot index.

Every Linear module a pool's adapters may target is wrapped once by a
`SlotLoraLinear` that reads its low-rank factors from preallocated slot
storage: one flat tensor per slot holding every module's A and B at the
pool's max rank (smaller ranks are zero-padded; alpha/rank is folded into B).
So:
- activating a resident adapter writes a few numbers into a shared state
  tensor (no per-module Python work, no recompilation under torch.compile);
- loading an adapter into a slot is one contiguous copy of a prepared flat
  buffer, which the RAM tier keeps in exactly the slot's layout and dtype.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_format import CanonicalLora

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class AdapterMismatchError(ValueError):
    """The adapter does not fit the base model or the pool's limits."""


@dataclass(frozen=True)
class ModuleLayout:
    name: str  # canonical path: "<component>.<module path>"
    in_features: int
    out_features: int
    a_offset: int  # element offsets inside one slot's flat storage
    b_offset: int


@dataclass
class PreparedAdapter:
    """An adapter in the exact layout and dtype of one slot (see SlotEngine.prepare)."""

    flat: torch.Tensor
    rank: int
    modules: int

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


class ActiveState(nn.Module):
    """Which slots are active and with what scale; shared by every wrapped layer.

    `rank_scale` holds one scale per (adapter, rank row) so the layer applies
    several adapters with one matmul pair; its values change in place on a
    switch, its shape only when the number of active adapters does.
    """

    def __init__(self, max_rank: int) -> None:
        super().__init__()
        self.max_rank = max_rank
        self.enabled = False
        self.register_buffer("slot_index", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("rank_scale", torch.zeros(max_rank), persistent=False)


class SlotLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, state: ActiveState) -> None:
        super().__init__()
        self.base = base
        self.lora_a = a  # view [slots, R, in] into the slot storage
        self.lora_b = b  # view [slots, out, R]
        self.state = state

    # Registered as plain attributes (not buffers) so state_dict() stays the base model's.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        st = self.state
        if not st.enabled:
            return y
        idx = st.slot_index
        k = idx.shape[0]
        a = self.lora_a.index_select(0, idx).reshape(k * st.max_rank, -1)
        b = self.lora_b.index_select(0, idx)
        b = b[0] if k == 1 else b.permute(1, 0, 2).reshape(b.shape[1], k * st.max_rank)
        h = F.linear(x.to(a.dtype), a) * st.rank_scale.to(a.dtype)
        return y + F.linear(h, b).to(y.dtype)


class SlotEngine:
    """Owns the slot storage and the wrapped layers of one pipeline."""

    def __init__(self, pipe, n_slots: int, max_rank: int, target_suffixes: tuple[str, ...] = DEFAULT_TARGETS,
                 components: tuple[str, ...] = ("unet",), max_active: int = 4) -> None:
        if n_slots < 1 or max_rank < 1:
            raise ValueError("n_slots and max_rank must be >= 1")
        self.n_slots = n_slots
        self.max_rank = max_rank
        self.max_active = max_active
        self.components = components
        self._lock = threading.Lock()
        first = getattr(pipe, components[0])
        self.device = next(first.parameters()).device
        self.dtype = next(first.parameters()).dtype
        self.state = ActiveState(max_rank).to(self.device)
        targets = self._find_targets(pipe, target_suffixes)
        if not targets:
            raise ValueError(f"no Linear modules match the target suffixes {target_suffixes}")
        layouts: list[ModuleLayout] = []
        off = 0
        for name, mod in targets:
            a_off = off
            off += max_rank * mod.in_features
            b_off = off
            off += mod.out_features * max_rank
            layouts.append(ModuleLayout(name, mod.in_features, mod.out_features, a_off, b_off))
        self.slot_numel = off
        self.layouts = {lay.name: lay for lay in layouts}
        self.storage = torch.zeros(n_slots, off, dtype=self.dtype, device=self.device)
        for (name, mod), lay in zip(targets, layouts, strict=True):
            a = self.storage[:, lay.a_offset:lay.a_offset + max_rank * lay.in_features].view(
                n_slots, max_rank, lay.in_features)
            b = self.storage[:, lay.b_offset:lay.b_offset + lay.out_features * max_rank].view(
                n_slots, lay.out_features, max_rank)
            self._replace(pipe, name, SlotLoraLinear(mod, a, b, self.state))

    @property
    def slot_nbytes(self) -> int:
        return self.slot_numel * self.storage.element_size()

    def _find_targets(self, pipe, suffixes: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
        found = []
        for comp in self.components:
            model = getattr(pipe, comp, None)
            if model is None:
                continue
            for path, mod in model.named_modules():
                if isinstance(mod, nn.Linear) and any(path == s or path.endswith("." + s) for s in suffixes):
                    found.append((f"{comp}.{path}", mod))
        return found

    @staticmethod
    def _replace(pipe, name: str, new: nn.Module) -> None:
        comp, path = name.split(".", 1)
        parent_path, _, attr = path.rpartition(".")
        parent = getattr(pipe, comp).get_submodule(parent_path) if parent_path else getattr(pipe, comp)
        setattr(parent, attr, new)

    # -- validation and preparation (CPU, any thread) ---------------------------------------------

    def check(self, lora: CanonicalLora) -> None:
        """Raise AdapterMismatchError naming the first module that does not fit."""
        if lora.rank > self.max_rank:
            raise AdapterMismatchError(f"rank {lora.rank} exceeds the pool's max rank {self.max_rank}")
        for name, pair in lora.modules.items():
            comp = name.split(".", 1)[0]
            lay = self.layouts.get(name)
            if lay is None:
                if comp not in self.components:
                    raise AdapterMismatchError(
                        f"adapter has {comp} LoRA layers; this pool applies LoRA to {', '.join(self.components)} only")
                raise AdapterMismatchError(f"module {name} is not a LoRA target of this base model")
            if pair.down.shape[1] != lay.in_features or pair.up.shape[0] != lay.out_features:
                raise AdapterMismatchError(
                    f"module {name}: shape {tuple(pair.up.shape[:1])}x{tuple(pair.down.shape[1:])} does not "
                    f"match the base model's {lay.out_features}x{lay.in_features} (adapter for another base model?)")

    def prepare(self, lora: CanonicalLora, pin_memory: bool | None = None) -> PreparedAdapter:
        """Lay the adapter out as one slot's flat buffer (zero-padded, alpha/rank folded in)."""
        self.check(lora)
        R = self.max_rank
        flat = torch.zeros(self.slot_numel, dtype=self.dtype)
        for name, pair in lora.modules.items():
            lay = self.layouts[name]
            r = pair.rank
            a = flat[lay.a_offset:lay.a_offset + R * lay.in_features].view(R, lay.in_features)
            b = flat[lay.b_offset:lay.b_offset + lay.out_features * R].view(lay.out_features, R)
            a[:r].copy_(pair.down)
            b[:, :r].copy_(pair.up.float() * pair.scale)
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        if pin_memory:
            flat = flat.pin_memory()
        return PreparedAdapter(flat=flat, rank=lora.rank, modules=len(lora.modules))

    # -- slot operations (the GPU job thread) -------------------------------------------------------

    def load(self, slot: int, prepared: PreparedAdapter) -> None:
        self.storage[slot].copy_(prepared.flat, non_blocking=prepared.flat.is_pinned())

    def clear(self, slot: int) -> None:
        self.storage[slot].zero_()

    def activate(self, slots_and_scales: list[tuple[int, float]]) -> None:
        """Make these slots active with these scales; an empty list means the base model alone."""
        if not slots_and_scales:
            self.state.enabled = False
            return
        if len(slots_and_scales) > self.max_active:
            raise AdapterMismatchError(f"at most {self.max_active} adapters per request")
        st = self.state
        k = len(slots_and_scales)
        idx = torch.tensor([s for s, _ in slots_and_scales], dtype=torch.long)
        scale = torch.tensor([w for _, w in slots_and_scales], dtype=st.rank_scale.dtype).repeat_interleave(
            self.max_rank)
        if st.slot_index.shape[0] == k:
            st.slot_index.copy_(idx)
            st.rank_scale.copy_(scale)
        else:
            st.slot_index = idx.to(self.device)
            st.rank_scale = scale.to(self.device)
        st.enabled = True
