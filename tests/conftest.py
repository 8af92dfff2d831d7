"""Shared fixtures and the tiers.

A test's tier is its folder: tests/unit, tests/process, tests/cluster; each test is marked with it here
(`-m unit`, `-m "not cluster"`), so no test file states its tier. Also: one CPU thread for torch (the machine is
small and shared), the tiny pipeline.
"""

from __future__ import annotations

import os

os.environ.setdefault("LORAPLEX_TORCH_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Every process a test starts inherits this: dialling an address outside loopback (a fake
# pod IP, say) fails at once instead of leaving the machine (loraplex/egress.py).
os.environ.setdefault("LORAPLEX_EGRESS", "local")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "process", "cluster", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/{{{','.join(TIERS)}}}/")
        item.add_marker(tier)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # the operator's tests don't need torch
        return
    torch.set_num_threads(int(os.environ["LORAPLEX_TORCH_THREADS"]))


@pytest.fixture(scope="session")
def tiny_pipe():
    from inference_pod.worker.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_flux_pipe():
    from inference_pod.worker.tiny_flux import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline()
