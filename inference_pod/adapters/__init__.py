"""Where adapter bytes come from and where they are kept.

`sources` fetches a file from the hub, an https URL (sha256-checked) or a path; `formats` reads safetensors only and
converts diffusers/peft and kohya/A1111 keys to one canonical form; `tiers` keeps adapters in GPU slots, host RAM and
on disk, each tier a budgeted `lru` with pinned entries exempt.
"""
