"""The slot engine: LoRA layers installed once, adapters switched by slot index.

Every Linear module a pool's adapters may target is wrapped once by a
`SlotLoraLinear` that reads its low-rank factors from preallocated slot
storage shared by all wrapped layers.

Layout: one slot is a rank-major matrix [max_rank, D], D = sum over modules
of (in_features + out_features). Row j holds rank row j of every module's
A (down, [r, in]) followed by the same row of its B transposed ([r, out],
alpha/rank folded in). A rank-r adapter is therefore exactly the first r
rows of a slot: one contiguous block of r*D elements. So
- the RAM tier keeps an adapter compact (its own rank, slot dtype), and
  loading it into a slot of any max rank is ONE contiguous copy (plus one
  memset when it replaces a higher-rank adapter);
- activating resident adapters writes a few scalars and two tiny index/scale
  tensors in place (no per-module Python work, no tensor shape change for
  the same number of adapters, hence no recompilation under torch.compile);
- in eager mode each layer only reads the active rows (a rank-8 adapter in
  rank-64 slots costs rank-8 compute), via views, without gathering.

An adapter that targets only part of the pool's modules (an attention-only
FLUX LoRA in a pool that also targets MLPs and modulations) is kept compact:
its prepared copy holds only the column spans it covers (`spans`), and
loading it is one copy per span plus one memset per gap. The layout orders
modules by target group, so such an adapter is one or a few spans.

Several adapters per request are applied as one concatenated low-rank pair
(K*r rows, per-row scales). `slots.batching` extends the engine with a
per-sample mode (one batch carrying requests for different adapters).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from inference_pod.adapters.formats import CanonicalLora
from inference_pod.slots import host_memory
from inference_pod.slots.layers import ActiveState, SlotLoraLinear
from inference_pod.slots.targets import UNET_TARGETS

__all__ = ["AdapterMismatchError", "ModuleLayout", "PreparedAdapter", "SlotEngine", "SlotLoraLinear"]


class AdapterMismatchError(ValueError):
    """The adapter does not fit the base model or the pool's limits."""


@dataclass(frozen=True)
class ModuleLayout:
    name: str  # canonical path: "<component>.<module path>"
    in_features: int
    out_features: int
    a_offset: int  # column offsets inside one slot's [max_rank, D] matrix
    b_offset: int


@dataclass
class PreparedAdapter:
    """An adapter laid out as the first `rank` rows of a slot, in the slot's dtype.

    `flat` is [rank, D], contiguous (pinned when the engine's device is CUDA),
    so loading it is a single copy whatever the slots' max rank. A compact
    adapter (`spans` set) holds only the column ranges [start, end) of a slot
    row it covers, side by side: `flat` is [rank, sum of span widths].
    """

    flat: torch.Tensor
    rank: int
    modules: int
    spans: tuple[tuple[int, int], ...] | None = None

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()


def _fast_on_cpu(dtype: torch.dtype) -> bool:
    """Whether this CPU has fast matmul kernels for a 16-bit dtype (AVX512-BF16/AMX, AVX512-FP16)."""
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False
    return True


class SlotEngine:
    """Owns the slot storage and the wrapped layers of one pipeline."""

    def __init__(
        self,
        pipe,
        n_slots: int,
        max_rank: int,
        target_suffixes: tuple[str, ...] = UNET_TARGETS,
        components: tuple[str, ...] = ("unet",),
        max_active: int = 4,
        compute_dtype: torch.dtype | None | str = "auto",
    ) -> None:
        """compute_dtype: dtype of the low-rank matmuls; None: the slots' (= the model's) dtype; "auto":
        float32 for bf16/fp16 models on a CPU without native 16-bit matmul kernels, else None."""
        if n_slots < 1 or max_rank < 1 or max_active < 1:
            raise ValueError("n_slots, max_rank and max_active must be >= 1")
        self.n_slots = n_slots
        self.max_rank = max_rank
        self.max_active = max_active
        self.components = tuple(c for c in components if getattr(pipe, c, None) is not None)
        if not self.components:
            raise ValueError(f"the pipeline has none of the components {components}")
        self._pipe = pipe
        first = getattr(pipe, self.components[0])
        self.device = next(first.parameters()).device
        self.dtype = next(first.parameters()).dtype
        targets = self._find_targets(pipe, target_suffixes)
        if not targets:
            raise ValueError(f"no Linear modules match the target suffixes {target_suffixes}")
        self._lay_out(targets)
        self._allocate_storage()
        self.compute_dtype = self._pick_compute_dtype(compute_dtype)
        self._init_states()
        self._originals: list[tuple[str, nn.Linear]] = targets
        self._install_layers(targets)

    def _lay_out(self, targets: list[tuple[str, nn.Linear]]) -> None:
        """Column offsets of every module's A and B^T inside one rank row of width D (`width`)."""
        layouts: list[ModuleLayout] = []
        off = 0
        for name, mod in targets:
            layouts.append(ModuleLayout(name, mod.in_features, mod.out_features, off, off + mod.in_features))
            off += mod.in_features + mod.out_features
        self.width = off  # D: elements per rank row
        self.slot_numel = self.max_rank * off
        self.layouts = {lay.name: lay for lay in layouts}

    def _allocate_storage(self) -> None:
        """All slots in one [n_slots, max_rank, D] tensor (huge pages on a CPU)."""
        shape = (self.n_slots, self.max_rank, self.width)
        if self.device.type == "cpu":
            self.storage = host_memory.zeros(shape, self.dtype)
        else:
            self.storage = torch.zeros(*shape, dtype=self.dtype, device=self.device)
        self.slot_rank = [0] * self.n_slots  # rows of each slot that may be non-zero

    def _pick_compute_dtype(self, compute_dtype: torch.dtype | None | str) -> torch.dtype | None:
        """The low-rank matmuls' dtype; None: the slots' own.

        bf16/fp16 matmuls with a handful of rows run ~10x slower than fp32 on CPUs without native 16-bit kernels
        (measured: 1.4-2.8 ms vs 0.25-0.45 ms per SDXL attention layer on AVX2); there "auto" computes in fp32.
        """
        if compute_dtype == "auto":
            slow16 = self.device.type == "cpu" and self.dtype in (torch.bfloat16, torch.float16)
            return torch.float32 if slow16 and not _fast_on_cpu(self.dtype) else None
        if compute_dtype == self.dtype:
            return None
        assert compute_dtype is None or isinstance(compute_dtype, torch.dtype), compute_dtype
        return compute_dtype

    def _init_states(self) -> None:
        """One ActiveState per component, and the host arrays activate() writes the active slots into."""
        rows_dtype = self.compute_dtype or self.dtype
        # One state per component, so an extension can give the UNet and the text encoders different batch
        # layouts; activate() sets them all.
        self.states = {
            c: ActiveState(self.max_rank, self.max_active, rows_dtype, self.device, self.compute_dtype)
            for c in self.components
        }
        st0 = self.state
        # Host arrays activate() writes into: on CPU (fp32 rows) they are the
        # state tensors' own memory, so a switch is a few numpy stores;
        # otherwise a staging copy uploaded once per switch.
        self._direct = self.device.type == "cpu" and rows_dtype == torch.float32
        # On a GPU the staging arrays are pageable host memory: a non-blocking copy from pageable memory is staged
        # by the driver before the call returns (so the next switch may overwrite the arrays at once) and ordered
        # on the stream before the next forward, without the stream synchronisation a blocking copy adds (two per
        # switch, each waiting for all queued GPU work).
        self._upload_async = self.device.type == "cuda"
        self._host_index = [self._host(t, np.int64) for t in st0.index_by_k]
        self._host_rows = [self._host(t, np.float32) for t in st0.rows_by_k]
        self._host_rows_full = [self._host(t, np.float32) for t in st0.rows_full_by_k]
        self._active: tuple[tuple[int, float], ...] = ()
        self._rows_views: dict[tuple[int, int], tuple[torch.Tensor, np.ndarray]] = {}
        self._epoch = 0  # one counter for all states, so a layer's cached views can never match a stale epoch

    def _install_layers(self, targets: list[tuple[str, nn.Linear]]) -> None:
        """Wrap every target Linear in a SlotLoraLinear reading its A and B^T columns of the slot storage."""
        for name, mod in targets:
            lay = self.layouts[name]
            a = self.storage[:, :, lay.a_offset : lay.a_offset + lay.in_features]
            bt = self.storage[:, :, lay.b_offset : lay.b_offset + lay.out_features]
            self._replace(self._pipe, name, SlotLoraLinear(mod, a, bt, self.states[name.split(".", 1)[0]]))

    def _host(self, t: torch.Tensor, np_dtype) -> np.ndarray:
        return t.numpy() if self._direct else np.zeros(t.shape, np_dtype)

    @property
    def state(self) -> ActiveState:
        """The first component's state (the UNet's)."""
        return self.states[self.components[0]]

    @property
    def slot_nbytes(self) -> int:
        return self.slot_numel * self.storage.element_size()

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the slot layout (module order and sizes, dtype), not the slot count or max rank."""
        h = hashlib.sha256(str(self.dtype).encode())
        for lay in self.layouts.values():
            h.update(f"{lay.name}:{lay.in_features}:{lay.out_features};".encode())
        return h.hexdigest()[:24]

    def _find_targets(self, pipe, suffixes: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
        found = []
        for comp in self.components:
            model = getattr(pipe, comp)
            for path, mod in model.named_modules():
                if isinstance(mod, SlotLoraLinear):
                    raise ValueError(f"{comp} already has slot LoRA layers installed")
                if isinstance(mod, nn.Linear) and any(path == s or path.endswith("." + s) for s in suffixes):
                    if type(mod) is not nn.Linear:
                        # A subclass (quantised, ...) computes differently from F.linear on its weight.
                        raise ValueError(
                            f"{comp}.{path} is a {type(mod).__name__}; slot LoRA wraps plain nn.Linear layers only"
                        )
                    found.append((f"{comp}.{path}", mod))
        # Layout order: component, then the first target suffix a module matches, then model order. Suffixes are
        # listed by group (FLUX: attention, MLP, modulation), so an adapter that targets one group only is one
        # contiguous span of every slot row.
        comp_rank = {c: i for i, c in enumerate(self.components)}

        def order(item: tuple[str, nn.Linear]) -> tuple[int, int]:
            comp, path = item[0].split(".", 1)
            return comp_rank[comp], next(i for i, s in enumerate(suffixes) if path == s or path.endswith("." + s))

        return sorted(found, key=order)

    @staticmethod
    def _replace(pipe, name: str, new: nn.Module) -> None:
        comp, path = name.split(".", 1)
        parent_path, _, attr = path.rpartition(".")
        parent = getattr(pipe, comp).get_submodule(parent_path) if parent_path else getattr(pipe, comp)
        setattr(parent, attr, new)

    def uninstall(self) -> None:
        """Put the original Linear modules back (the engine is unusable afterwards)."""
        for name, mod in self._originals:
            self._replace(self._pipe, name, mod)
        self.storage = torch.empty(0, dtype=self.dtype, device=self.device)

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
                        f"adapter has {comp} LoRA layers; this pool applies LoRA to {', '.join(self.components)} "
                        "only (text-encoder LoRA needs a pool started with --text-encoder-lora)"
                    )
                raise AdapterMismatchError(f"module {name} is not a LoRA target of this base model")
            if pair.down.shape[1] != lay.in_features or pair.up.shape[0] != lay.out_features:
                raise AdapterMismatchError(
                    f"module {name}: the adapter maps {pair.down.shape[1]} -> {pair.up.shape[0]} features (in -> out), "
                    f"the base model's layer {lay.in_features} -> {lay.out_features} (adapter for another base model?)"
                )

    def prepare(self, lora: CanonicalLora, pin_memory: bool | None = None) -> PreparedAdapter:
        """Lay the adapter out as the first `rank` rows of a slot (zero-padded, alpha/rank folded into B)."""
        self.check(lora)
        r = max(lora.rank, 1)
        if pin_memory is None:
            pin_memory = self.device.type == "cuda"
        spans = self.spans_of(lora)
        # Slot-row column -> `flat` column: the spans laid side by side (shift by each span's start).
        shift: dict[int, int] = {}
        width = 0
        for start, end in spans or ((0, self.width),):
            shift[start] = width - start
            width += end - start
        # Pinned memory for a GPU (one DMA), huge pages for a CPU slot (one TLB-light memcpy).
        flat = torch.zeros(r, width, dtype=self.dtype) if pin_memory else host_memory.zeros((r, width), self.dtype)
        starts = sorted(shift)
        for name, pair in lora.modules.items():
            lay = self.layouts[name]
            pr = pair.rank
            d = shift[max(st for st in starts if st <= lay.a_offset)]  # a module's A and B^T lie in one span
            flat[:pr, d + lay.a_offset : d + lay.a_offset + lay.in_features].copy_(pair.down)
            flat[:pr, d + lay.b_offset : d + lay.b_offset + lay.out_features].copy_((pair.up.float() * pair.scale).t())
        if not bool(torch.isfinite(flat).all()):
            # One NaN would turn every image of every request using this slot black.
            raise AdapterMismatchError("adapter weights contain NaN or infinity (or overflow the pool's dtype)")
        if pin_memory:
            flat = flat.pin_memory()
        return PreparedAdapter(flat=flat, rank=r, modules=len(lora.modules), spans=spans)

    # An adapter covering at least this share of a slot row is kept whole (one copy, no gaps to clear).
    COMPACT_BELOW = 0.9

    def spans_of(self, lora: CanonicalLora) -> tuple[tuple[int, int], ...] | None:
        """The column spans of a slot row the adapter's modules cover, merged; None when it covers (nearly) all."""
        ranges = sorted(
            (lay.a_offset, lay.b_offset + lay.out_features) for lay in (self.layouts[n] for n in lora.modules)
        )
        merged: list[list[int]] = []
        for start, end in ranges:
            if merged and merged[-1][1] == start:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        covered = sum(e - s for s, e in merged)
        if covered >= self.COMPACT_BELOW * self.width:
            return None
        return tuple((s, e) for s, e in merged)

    # -- slot operations (the GPU job thread) -------------------------------------------------------

    def slot_rows(self, slot: int, rank: int) -> torch.Tensor:
        """The first `rank` rows of a slot: a contiguous [rank, D] block to copy or read into."""
        return self.storage[slot, :rank]

    def load(self, slot: int, prepared: PreparedAdapter) -> None:
        """Copy a prepared adapter into a slot: one contiguous copy (a compact adapter: one per span and a memset
        per gap), plus one memset of stale rows."""
        r = prepared.rank
        rows = self.storage[slot, :r]
        non_blocking = prepared.flat.is_pinned()
        if prepared.spans is None:
            rows.copy_(prepared.flat, non_blocking=non_blocking)
        else:
            col = end = 0
            for start, end_ in prepared.spans:
                rows[:, end:start].zero_()  # what a previous adapter left between the spans
                rows[:, start:end_].copy_(prepared.flat[:, col : col + end_ - start], non_blocking=non_blocking)
                col += end_ - start
                end = end_
            rows[:, end:].zero_()
        self.mark_loaded(slot, r)

    def mark_loaded(self, slot: int, rank: int) -> None:
        """Record that rows [:rank] of the slot were just written; zero what a bigger adapter left behind."""
        old = self.slot_rank[slot]
        if old > rank:
            # Compiled graphs read all max_rank rows, and a stale row times a
            # zero scale can still be NaN in fp16 (inf * 0), so clear them.
            self.storage[slot, rank:old].zero_()
        self.slot_rank[slot] = rank
        if old != rank and any(s == slot for s, _ in self._active):
            self.activate(list(self._active))  # the rows eager layers read changed

    def clear(self, slot: int) -> None:
        self.storage[slot].zero_()
        old, self.slot_rank[slot] = self.slot_rank[slot], 0
        if old and any(s == slot for s, _ in self._active):
            self.activate(list(self._active))

    def check_slots(self, slots: list[int]) -> None:
        for s in slots:
            if not 0 <= s < self.n_slots:
                raise AdapterMismatchError(f"slot {s} does not exist (the engine has {self.n_slots})")

    def activate(self, slots_and_scales: list[tuple[int, float]]) -> None:
        """Make these slots active with these scales for every sample; an empty list means the base model alone.

        The switch path: numpy stores into preallocated state tensors and a few attribute writes; nothing
        proportional to the number of layers.

        Aliasing invariant: on a CPU with fp32 rows (`_direct`) the host arrays written here ARE the memory of the
        state tensors the layers read (`index_by_k[k]`, `rows_by_k[k]`, `rows_full_by_k[k]` of the first
        component's state), so every slot is validated before the first store and a refused activation leaves the
        live state untouched. Elsewhere they are staging arrays, uploaded once per switch. Every component's state
        then points at those same first-state tensors: one upload serves the UNet and the text encoders. The
        several-adapter `rows` is a cached view of the first k*r entries of `rows_by_k[k]` (`_rows_view`).
        """
        k = len(slots_and_scales)
        if k == 0:
            self._active = ()
            for st in self.states.values():
                st.off()
            return
        if k > self.max_active:
            raise AdapterMismatchError(f"at most {self.max_active} adapters per request")
        max_rank = self.max_rank
        st0 = self.state
        host_index, host_rows_full = self._host_index[k], self._host_rows_full[k]
        if k == 1:
            slot, scale = slots_and_scales[0]
            if not 0 <= slot < self.n_slots:
                self.check_slots([slot])
            rank = self.slot_rank[slot] or 1
            host_index[0] = slot
            host_rows_full[:] = scale
            rows = st0.rows_by_k[1]  # the single-adapter eager path passes the scale as alpha
        else:
            # Validate everything before the first store: on CPU these arrays are the live state.
            slot_rank, n_slots = self.slot_rank, self.n_slots
            rank = 1
            for s, _ in slots_and_scales:
                if not 0 <= s < n_slots:
                    self.check_slots([s])
                rank = max(rank, slot_rank[s])
            rows, host_rows = self._rows_view(k, rank)
            for i, (s, w) in enumerate(slots_and_scales):
                host_index[i] = s
                host_rows_full[i * max_rank : (i + 1) * max_rank] = w
                host_rows[i * rank : (i + 1) * rank] = w
            if not self._direct:
                rows.copy_(torch.from_numpy(host_rows), non_blocking=self._upload_async)
        index, rows_full = st0.index_by_k[k], st0.rows_full_by_k[k]
        if not self._direct:
            index.copy_(torch.from_numpy(host_index), non_blocking=self._upload_async)
            rows_full.copy_(torch.from_numpy(host_rows_full), non_blocking=self._upload_async)
        self._active = tuple(slots_and_scales)
        slot, scale = slots_and_scales[0]
        self._epoch += 1
        for st in self.states.values():
            st.share(
                k=k,
                slot=slot,
                scale=float(scale),
                rank=rank,
                epoch=self._epoch,
                index=index,
                rows=rows,
                rows_full=rows_full,
            )

    def new_epoch(self) -> int:
        """For extensions that set the states themselves: forget the shared activation; a fresh epoch number."""
        self._active = ()
        self._epoch += 1
        return self._epoch

    def _rows_view(self, k: int, r: int) -> tuple[torch.Tensor, np.ndarray]:
        """The first k*r entries of the K=k rows tensor and of its host array (cached: no allocation)."""
        key = (k, r)
        view = self._rows_views.get(key)
        if view is None:
            view = self._rows_views[key] = (self.state.rows_by_k[k][: k * r], self._host_rows[k][: k * r])
        return view
