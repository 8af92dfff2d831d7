"""Router-side request checks: validation, name resolution, the route header, bearer tokens."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inference_pod.router.auth import TokenFile
from inference_pod.router.request import resolve_request, route_header, validate_generation
from loraplex.api.errors import ApiError
from loraplex.api.routing_table import parse_table

TABLE = parse_table(
    {
        "pools": {"sdxl": {"baseModel": "sdxl-base"}, "flux": {"baseModel": "flux-base"}},
        "adapters": {
            "pixel": {"pool": "sdxl", "source": {"type": "hub", "repo": "a/pixel"}, "aliases": ["px"], "scale": 0.7},
            "ink": {"pool": "sdxl", "source": {"type": "path", "path": "/ink.safetensors"}},
            "fluxy": {"pool": "flux", "source": {"type": "url", "url": "https://x.test/f.safetensors"}},
        },
    }
)


def err(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(*args)
    return e.value


def test_validate_generation() -> None:
    assert validate_generation({"model": "px"}) == ("px", [])
    assert validate_generation({"model": "sdxl-base", "adapters": [{"name": "ink", "scale": 1}, "px"]}) == (
        "sdxl-base",
        ["ink", "px"],
    )
    assert validate_generation({"model": "m", "adapters": None}) == ("m", [])
    cases = [
        ([], 400, None),
        ({}, 400, "model"),
        ({"model": ""}, 400, "model"),
        ({"model": ["x"]}, 400, "model"),
        ({"model": "m", "adapters": {}}, 400, "adapters"),
        ({"model": "m", "adapters": [3]}, 400, "adapters[0]"),
        ({"model": "m", "adapters": [{"name": 1}]}, 400, "adapters[0].name"),
        ({"model": "m", "adapters": ["a", {"name": "b", "scale": True}]}, 400, "adapters[1].scale"),
    ]
    for body, status, param in cases:
        e = err(validate_generation, body)
        assert (e.status, e.param) == (status, param), body


def test_resolve_request() -> None:
    r = resolve_request(TABLE, "px", ["ink", "pixel"])
    assert (r.pool, r.model_adapter, r.adapters) == ("sdxl", "pixel", ("pixel", "ink"))
    assert r.names == {"px": "pixel", "ink": "ink", "pixel": "pixel"}
    r = resolve_request(TABLE, "sdxl-base", [])
    assert (r.pool, r.model_adapter, r.adapters) == ("sdxl", None, ())
    assert resolve_request(TABLE, "sdxl", ["ink"]).adapters == ("ink",)
    e = err(resolve_request, TABLE, "nope", [])
    assert (e.status, e.param, e.code) == (404, "model", "model_not_found") and "nope" in e.message
    assert err(resolve_request, TABLE, "sdxl", ["ghost"]).param == "adapters[0].name"
    assert err(resolve_request, TABLE, "sdxl", ["fluxy"]).code == "pool_mismatch"
    assert err(resolve_request, TABLE, "sdxl", ["ink", "flux-base"]).code == "not_an_adapter"


def test_route_header_is_compact_json_with_entries() -> None:
    raw = route_header(TABLE, resolve_request(TABLE, "px", ["ink"]))
    assert " " not in raw and raw.isascii()
    doc = json.loads(raw)
    assert doc["pool"] == "sdxl" and doc["model"] == "pixel"
    assert doc["adapters"]["pixel"] == TABLE.adapters["pixel"].model_dump(mode="json", by_alias=True)
    assert doc["adapters"]["pixel"]["source"]["type"] == "hub" and doc["adapters"]["pixel"]["scale"] == 0.7
    assert set(doc["adapters"]) == {"pixel", "ink"}


def test_token_file(tmp_path: Path) -> None:
    p = tmp_path / "tokens"
    p.write_text("# comment\n  tok-a  \n\ntok-b\n")
    tf = TokenFile(str(p), check_interval_s=0)
    assert tf.allows("Bearer tok-a") and tf.allows("Bearer tok-b")
    for bad in (None, "", "tok-a", "Bearer ", "Bearer tok-c", "Basic tok-a", "Bearer # comment"):
        assert not tf.allows(bad), bad
    p.write_text("tok-c\n")  # a rotated Secret
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert tf.allows("Bearer tok-c") and not tf.allows("Bearer tok-a")
    p.write_text("")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert not tf.allows("Bearer tok-c")  # empty file: fail closed
    p.unlink()
    assert not tf.allows("Bearer tok-c")
