"""The slot engine: LoRA layers installed once on every target module, reading their factors from preallocated slots.

`engine` owns slot storage and activation (switching a resident adapter is an index change); `layers` is the LoRA
linear that reads the active slots; `files` is the on-disk slot-layout copy; `host_memory` pinned, page-aligned host
buffers; `batching` the per-sample mode (each sample in a batch with its own adapter), an extension used by tests
and a benchmark only.
"""
