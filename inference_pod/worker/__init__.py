"""The worker: owns the device and one diffusers pipeline, and serves generations on loopback.

`server` is the aiohttp app; `config` its settings and limits (argparse derived from the dataclasses); `request`
validates a generation body; `jobs` runs one GPU job at a time from a bounded queue; `pipeline` loads the base model
(hub id, directory, or the built-in `tiny_model`); `metrics` the Prometheus series.
"""
