"""torch.compile on the tiny UNet: switching adapters, and loading new ones into slots, never recompiles.

A counting backend records every graph dynamo hands over; after one warm-up
compile per number of active adapters, any further compile fails the test
(error_on_recompile). Compiled outputs must equal the eager ones, which
proves the graph reads the current slot contents and indices rather than
values baked in at trace time.
"""

from __future__ import annotations

import copy

import pytest
import torch

from inference_pod.adapters.formats import canonicalize
from inference_pod.slots.engine import SlotEngine
from tests.unit.slots.slot_engine_helpers import make_adapter, unet_inputs

TOL = {"atol": 1e-5, "rtol": 1e-5}


class CountingBackend:
    def __init__(self, inner: str) -> None:
        self.compiles = 0
        self.inner = torch._dynamo.lookup_backend(inner)

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return self.inner(gm, example_inputs)


def _run(unet, inputs):
    with torch.no_grad():
        return unet(**inputs).sample


def _switch_without_recompiling(backend_name: str, tiny_pipe) -> None:
    pipe = copy.deepcopy(tiny_pipe)
    engine = SlotEngine(pipe, n_slots=4, max_rank=8, max_active=2)
    cfg = pipe.unet.config
    adapters = [make_adapter(pipe, rank=r, seed=60 + r) for r in (4, 8, 2, 6)]
    prepared = [engine.prepare(canonicalize(sd, cfg)) for sd in adapters]
    for slot in range(3):
        engine.load(slot, prepared[slot])
    inputs = unet_inputs(pipe, batch=2)

    def eager(active):
        engine.activate(active)
        return _run(pipe.unet, inputs)

    requests = [[(0, 1.0)], [(1, 0.7)], [(2, 1.2)], [(0, 0.3), (1, 1.0)], [(2, 1.0), (0, 0.5)], [], [(1, 1.0)]]
    want = [eager(a) for a in requests]

    torch._dynamo.reset()
    backend = CountingBackend(backend_name)
    compiled = torch.compile(pipe.unet, backend=backend)
    # Warm-up: one graph per number of active adapters (0, 1, 2); shapes differ, so these are expected.
    for active in ([(0, 1.0)], [(0, 0.3), (1, 1.0)], []):
        engine.activate(active)
        _run(compiled, inputs)
    warm = backend.compiles
    assert warm >= 1

    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            for active, expected in zip(requests, want, strict=True):
                engine.activate(active)
                torch.testing.assert_close(_run(compiled, inputs), expected, **TOL)
        # A new adapter loaded into a slot after compilation is seen, still without recompiling.
        engine.load(1, prepared[3])
        want_new = eager([(1, 0.9)])
        engine.activate([(1, 0.9)])
        torch.testing.assert_close(_run(compiled, inputs), want_new, **TOL)
        assert not torch.equal(want_new, want[1])
    assert backend.compiles == warm
    torch._dynamo.reset()
    engine.uninstall()


def test_switching_adapters_does_not_recompile(tiny_pipe):
    # Guards (what decides recompilation) are dynamo's, whatever the backend: the eager one is fastest.
    _switch_without_recompiling("eager", tiny_pipe)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_switching_adapters_does_not_recompile_real_backends(tiny_pipe, backend):
    # aot_eager functionalises the in-place LoRA update; inductor generates C++ for it.
    _switch_without_recompiling(backend, tiny_pipe)
