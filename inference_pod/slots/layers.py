"""The LoRA layer of the slot engine: nn.Linear plus the low-rank update of whichever slots are active.

Every wrapped layer of a component shares one `ActiveState`. The forward paths, all reading factors from the
engine's slot storage through views:
- one adapter (the common case, eager): views of the active slot's first `rank` rows, cached per activation; two
  small matmuls, scale as alpha;
- several adapters (eager): the active slots' rows are gathered and applied as one concatenated low-rank pair with
  per-row scales;
- under torch.compile: the same gathered form over all max_rank rows, reading only tensors whose values change in
  place, so the graph survives switches;
- `CUSTOM`: an extension computes the update (the per-sample batching of `slots.batching`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

OFF, SHARED, CUSTOM = 0, 1, 2

# An extension's update: (x, y, layer) -> y plus the layer's low-rank update.
Update = Callable[[torch.Tensor, torch.Tensor, "SlotLoraLinear"], torch.Tensor]


class ActiveState:
    """Which slots are active and with what scales, for the wrapped layers of one component.

    Eager layers read the Python scalars (`k`, `slot`, `scale`, `rank`, `epoch`) and, for several adapters, `index`
    and `rows` (a scale per rank row: `rank` rows per adapter). Compiled graphs read only `mode`, `index` and
    `rows_full` (max_rank rows per adapter), whose shapes depend on the number of active adapters alone; their
    values change in place, in tensors preallocated per K (`index_by_k`, `rows_by_k`, `rows_full_by_k`), so a
    switch neither allocates nor recompiles. Only the engine (and its extensions) change a state, through `off`,
    `share` and `custom`.
    """

    def __init__(
        self,
        max_rank: int,
        max_active: int,
        rows_dtype: torch.dtype,
        device: torch.device,
        compute_dtype: torch.dtype | None,
    ) -> None:
        self.max_rank = max_rank
        self.compute_dtype = compute_dtype  # None: compute in the slots' dtype
        self.mode = OFF
        self.k = 0
        self.slot = 0
        self.scale = 0.0
        self.rank = 1  # rows eager layers read: the largest rank among the active slots
        self.epoch = 0  # bumped whenever what eager layers cache (views of the active rows) changes
        self.update: Update | None = None  # the CUSTOM mode's update
        ks = range(max_active + 1)
        self.index_by_k = [torch.zeros(k, dtype=torch.long, device=device) for k in ks]
        self.rows_by_k = [torch.zeros(k * max_rank, dtype=rows_dtype, device=device) for k in ks]
        self.rows_full_by_k = [torch.zeros(k * max_rank, dtype=rows_dtype, device=device) for k in ks]
        self.index = self.index_by_k[0]
        self.rows = self.rows_by_k[0]
        self.rows_full = self.rows_full_by_k[0]

    def off(self) -> None:
        """No adapter: the layers compute the base model alone."""
        self.mode = OFF

    def share(
        self,
        *,
        k: int,
        slot: int,
        scale: float,
        rank: int,
        epoch: int,
        index: torch.Tensor,
        rows: torch.Tensor,
        rows_full: torch.Tensor,
    ) -> None:
        """K adapters for every sample: `slot`/`scale` are the first one's, `rank` the largest active rank."""
        self.index, self.rows, self.rows_full = index, rows, rows_full
        self.k, self.slot, self.scale, self.rank, self.epoch = k, slot, scale, rank, epoch
        self.mode = SHARED

    def custom(
        self,
        update: Update,
        *,
        k: int,
        rank: int,
        epoch: int,
        index: torch.Tensor,
        rows: torch.Tensor,
        rows_full: torch.Tensor,
    ) -> None:
        """An extension's own update (e.g. per-sample adapters), reading these index and scale tensors."""
        self.index, self.rows, self.rows_full = index, rows, rows_full
        self.k, self.rank, self.epoch = k, rank, epoch
        self.update = update
        self.mode = CUSTOM


class SlotLoraLinear(nn.Linear):
    """An nn.Linear (the very same weight and bias Parameters) plus the active slots' low-rank update.

    Being a Linear with the original parameters keeps state_dict() keys,
    isinstance checks and the no-adapter forward exactly those of the base
    layer; the base weights are never modified.
    """

    def __init__(self, base: nn.Linear, a: torch.Tensor, bt: torch.Tensor, state: ActiveState) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: share the parameters, allocate nothing
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        # Plain attributes, not buffers, so state_dict() stays the base model's.
        self.lora_a = a  # [slots, max_rank, in] strided view into the slot storage
        self.lora_bt = bt  # [slots, max_rank, out]
        self.state = state
        # [epoch, a rows, bt rows] of the single active slot; a list mutated in
        # place because nn.Module.__setattr__ costs microseconds per call.
        self._views: list = [-1, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        st = self.state
        mode = st.mode
        if mode == OFF:
            return y
        if mode == CUSTOM:
            assert st.update is not None
            return st.update(x, y, self)
        if torch.compiler.is_compiling():
            # Full max-rank rows and tensor indices only: nothing here depends on
            # which slots are active, so a switch never invalidates the graph.
            return add_gathered(x, y, self.lora_a, self.lora_bt, st.index, st.rows_full, st.compute_dtype)
        if st.k == 1:
            views = self._views
            if views[0] != st.epoch:
                views[0], views[1], views[2] = (
                    st.epoch,
                    self.lora_a[st.slot, : st.rank],
                    self.lora_bt[st.slot, : st.rank],
                )
            return _add_single(x, y, views[1], views[2], st.scale, st.compute_dtype)
        r = st.rank
        return add_gathered(x, y, self.lora_a[:, :r], self.lora_bt[:, :r], st.index, st.rows, st.compute_dtype)


def _add_single(
    x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, bt: torch.Tensor, scale: float, cd: torch.dtype | None
) -> torch.Tensor:
    """y + scale * (x A^T) Bt, in place on y's storage: two small matmuls, no gather, no new weights."""
    cd = cd or a.dtype
    if a.dtype != cd:  # slots in bf16/fp16 on a CPU without fast kernels for them: compute in fp32
        a, bt = a.to(cd), bt.to(cd)
    h = F.linear(x if x.dtype == cd else x.to(cd), a)
    out = y if y.is_contiguous() else y.contiguous()
    o2 = out.view(-1, out.shape[-1])
    h2 = h.view(-1, a.shape[0])
    if o2.dtype == cd:
        o2.addmm_(h2, bt, alpha=scale)
    else:
        o2.add_(torch.mm(h2, bt).to(o2.dtype), alpha=scale)
    return out


def add_gathered(
    x: torch.Tensor,
    y: torch.Tensor,
    a_all: torch.Tensor,
    bt_all: torch.Tensor,
    index: torch.Tensor,
    rows: torch.Tensor,
    cd: torch.dtype | None,
) -> torch.Tensor:
    """y + (x A^T * rows) Bt for the gathered slots: index [K], rows [K*r]; the K adapters' rows are concatenated
    into one [K*r] low-rank pair."""
    r = a_all.shape[1]
    n_in, n_out = a_all.shape[2], bt_all.shape[2]
    cd = cd or a_all.dtype
    out = y if y.is_contiguous() else y.contiguous()
    kr = index.shape[0] * r
    a = a_all.index_select(0, index).view(kr, n_in).to(cd)
    bt = bt_all.index_select(0, index).view(kr, n_out).to(cd)
    h = (F.linear(x.to(cd), a) * rows.to(cd)).view(-1, kr)
    if out.dtype == cd:
        out.view(-1, n_out).addmm_(h, bt)
    else:
        out.view(-1, n_out).add_(torch.mm(h, bt).to(out.dtype))
    return out
