"""Property tests (issue #10): the request parsers and the safetensors header reader answer any input with a
parsed value or a clear 4xx-shaped error, never an unexpected exception (a 5xx) or a hang."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference_pod.adapters.formats import AdapterFormatError, check_safetensors_header
from inference_pod.router.request import validate_generation
from inference_pod.worker.config import Limits
from inference_pod.worker.request import parse_request
from loraplex.api.errors import ApiError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "model",
    "prompt",
    "negative_prompt",
    "steps",
    "guidance_scale",
    "width",
    "height",
    "seed",
    "adapters",
    "n",
    "size",
    "response_format",
    "quality",
    "style",
    "user",
]
bodies = json_values | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(bodies, st.booleans())
def test_worker_request_parser(body, openai):
    try:
        req = parse_request(body, Limits(), openai=openai, default_steps=4, default_size=64)
    except ApiError as e:
        assert 400 <= e.status < 500
        return
    assert 1 <= req.steps <= Limits().max_steps and req.width % 8 == 0 and req.height % 8 == 0


@FAST
@given(bodies)
def test_router_request_validator(body):
    try:
        model, names = validate_generation(body)
    except ApiError as e:
        assert 400 <= e.status < 500
        return
    assert isinstance(model, str) and model and all(isinstance(n, str) and n for n in names)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=64),
        st.builds(lambda n, rest: struct.pack("<Q", n) + rest, st.integers(0, 2**64 - 1), st.binary(max_size=64)),
        st.builds(
            lambda doc, pad: (lambda raw: struct.pack("<Q", len(raw)) + raw + pad)(json.dumps(doc).encode()),
            json_values,
            st.binary(max_size=32),
        ),
    )
)
def test_safetensors_header_reader(tmp_path_factory, data):
    path = Path(tmp_path_factory.mktemp("st")) / "x.safetensors"
    path.write_bytes(data)
    try:
        header = check_safetensors_header(path)
    except AdapterFormatError as e:
        n = int.from_bytes(data[:8], "little")
        assert n < 10**6 or str(n) not in str(e)  # the first 8 bytes are never echoed as a number
        return
    assert isinstance(header, dict)
