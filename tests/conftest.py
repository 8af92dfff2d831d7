"""Shared fixtures: one CPU thread for torch (the machine is small and shared), the tiny pipeline."""

from __future__ import annotations

import os

os.environ.setdefault("LORAPLEX_TORCH_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Every process a test starts inherits this: dialling an address outside loopback (a fake
# pod IP, say) fails at once instead of leaving the machine (loraplex/egress.py).
os.environ.setdefault("LORAPLEX_EGRESS", "local")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # the operator's tests don't need torch
        return
    torch.set_num_threads(int(os.environ["LORAPLEX_TORCH_THREADS"]))


@pytest.fixture(scope="session")
def tiny_pipe():
    from inference_pod.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline()
