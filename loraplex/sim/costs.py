"""Cost parameters of the fleet simulator: what each step of serving a request takes.

Two profiles ship, SDXL on an A10G and on an H100; every figure is a
parameter (`CostProfile.replace(...)`, or the CLI's --inference-s, --pod-start-s,
...). Where a figure comes from:

- seed (Hugging Face's shared LoRA pool, 2023, SDXL 1024x1024, 25 steps,
  A10G): inference 8.5 s; per-request adapter load 2.7-3.5 s and unload
  0.13-0.28 s through diffusers; a cold deployment's warm-up ~25 s.
- ours (README, `benchmarks/adapter_switch.py`, rank-8 SDXL adapter of
  23.4 MB, 2-core CPU VM): resident switch 1.3 us; RAM -> slot 2.94 ms
  (one contiguous copy: 0.126 ms/MB); prepared file -> slot 4.33 ms with a
  warm page cache (we charge 1 ms/MB, a cold NVMe read); first use of an
  original file 179.7 ms (key conversion + validation + slot layout:
  7.7 ms/MB).
- assumed, to be replaced by your own figures: a hub download at 100 MB/s
  after 0.3 s of request latency; SDXL inference on an H100 of 2.0 s; a
  seed-style diffusers load on an H100 host of 1.9-2.5 s (host-bound: our own
  diffusers measurement was 1.88 s) and unload 0.06-0.13 s (64 ms measured);
  a PCIe Gen5 host-to-device copy of 0.05 ms/MB.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

TIERS = ("gpu", "ram", "disk", "source")


@dataclass(frozen=True)
class CostProfile:
    name: str
    inference_s: float  # one SDXL image, 1024x1024, 25 steps, batch 1
    resident_switch_s: float  # adapter already in a GPU slot: a slot-index change
    ram_to_slot_s_per_mb: float  # host RAM (slot layout) -> GPU slot
    disk_read_s_per_mb: float  # prepared slot-layout file on local disk -> RAM
    source_latency_s: float  # hub / URL request latency, per fetch
    source_s_per_mb: float  # download time per MB
    convert_s_per_mb: float  # first use: format conversion, validation, slot layout
    seed_load_s: tuple[float, float]  # the seed's diffusers load_lora_weights per switch (uniform)
    seed_unload_s: tuple[float, float]  # the seed's unload per switch (uniform)
    pod_start_s: float = 25.0  # a pod from scheduled to ready (model load + warm-up)
    hop_s: float = 0.002  # one sidecar -> sidecar forward, both ways
    ref_steps: int = 25  # inference_s is for this many steps ...
    ref_pixels: int = 1024 * 1024  # ... at this many pixels; other requests scale linearly

    def inference(self, steps: int, pixels: int, base_factor: float = 1.0) -> float:
        return self.inference_s * base_factor * (steps / self.ref_steps) * (pixels / self.ref_pixels)

    def fetch_s(self, tier: str, mb: float) -> float:
        """Time to bring an adapter of `mb` MB into host RAM from `tier` (disk or source)."""
        if tier == "disk":
            return self.disk_read_s_per_mb * mb
        if tier == "source":
            return self.source_latency_s + (self.source_s_per_mb + self.convert_s_per_mb + self.disk_read_s_per_mb) * mb
        return 0.0

    def to_slot_s(self, mb: float) -> float:
        return self.ram_to_slot_s_per_mb * mb

    def replace(self, **changes: object) -> CostProfile:
        return replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SDXL_A10G = CostProfile(
    name="sdxl-a10g",
    inference_s=8.5,
    resident_switch_s=1.3e-6,
    ram_to_slot_s_per_mb=2.94e-3 / 23.4,
    disk_read_s_per_mb=1.0e-3,
    source_latency_s=0.3,
    source_s_per_mb=0.01,
    convert_s_per_mb=0.17973 / 23.4,
    seed_load_s=(2.7, 3.5),
    seed_unload_s=(0.13, 0.28),
    pod_start_s=25.0,
)

SDXL_H100 = SDXL_A10G.replace(
    name="sdxl-h100",
    inference_s=2.0,
    ram_to_slot_s_per_mb=0.05e-3,
    seed_load_s=(1.9, 2.5),
    seed_unload_s=(0.06, 0.13),
)

PROFILES = {p.name: p for p in (SDXL_A10G, SDXL_H100)}
