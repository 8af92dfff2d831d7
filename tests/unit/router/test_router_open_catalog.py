"""The sidecar's side of the open catalog: an unregistered `owner/repo` name goes to a pool that serves on demand."""

from __future__ import annotations

import json

import pytest

from inference_pod.router.request import resolve_request, route_header
from loraplex.api.errors import ApiError
from loraplex.api.routing_table import RoutingTable, parse_table


def table(open_pools: tuple[str, ...] = ("sdxl",)) -> RoutingTable:
    return parse_table(
        {
            "pools": {
                name: {"baseModel": f"{name}-base", "aliases": [f"{name}-alias"], "openCatalog": name in open_pools}
                for name in ("flux", "sdxl")
            },
            "adapters": {"org/registered": {"pool": "flux", "source": {"type": "hub", "repo": "org/registered"}}},
        }
    )


def err(t: RoutingTable, model: str, extra: list[str] | None = None) -> ApiError:
    with pytest.raises(ApiError) as e:
        resolve_request(t, model, extra or [])
    return e.value


def test_unregistered_repo_goes_to_the_open_pool_with_an_on_demand_entry() -> None:
    r = resolve_request(table(), "alice/ink@v2:w.safetensors", [])
    assert (r.pool, r.model_adapter, r.adapters) == (
        "sdxl",
        "alice/ink@v2:w.safetensors",
        ("alice/ink@v2:w.safetensors",),
    )
    entry = r.on_demand["alice/ink@v2:w.safetensors"]
    assert entry.on_demand and entry.pool == "sdxl"
    doc = json.loads(route_header(table(), r))
    assert doc["adapters"]["alice/ink@v2:w.safetensors"]["onDemand"] is True
    assert doc["adapters"]["alice/ink@v2:w.safetensors"]["source"]["type"] == "hub"


def test_registered_names_win_and_closed_pools_stay_404() -> None:
    r = resolve_request(table(), "org/registered", [])
    assert (r.pool, r.on_demand) == ("flux", {})
    assert err(table(open_pools=()), "alice/ink").status == 404
    assert err(table(), "no-slash-name").status == 404


def test_pool_qualifier_picks_among_open_pools() -> None:
    both = table(("flux", "sdxl"))
    assert resolve_request(both, "alice/ink", []).pool == "flux"  # the first open pool by name
    assert resolve_request(both, "sdxl/alice/ink", []).pool == "sdxl"
    r = resolve_request(both, "sdxl-alias/alice/ink", [])
    assert (r.pool, r.model_adapter) == ("sdxl", "alice/ink")  # canonical: without the qualifier
    assert err(table(("sdxl",)), "flux/alice/ink").status == 404  # flux serves no open catalog
    assert err(both, "nopool/alice/ink").status == 404


def test_extra_on_demand_adapters_run_on_the_models_pool() -> None:
    r = resolve_request(table(), "sdxl-base", ["alice/ink", "bob/pen"])
    assert r.pool == "sdxl" and r.adapters == ("alice/ink", "bob/pen") and set(r.on_demand) == {"alice/ink", "bob/pen"}
    e = err(table(), "flux-base", ["alice/ink"])
    assert e.status == 404 and e.param == "adapters[0].name"


@pytest.mark.parametrize(
    "name", ["alice/../x", "alice/ink@", "alice/ink:../../etc/passwd", "a/b%2F..", "a/" + "b" * 300]
)
def test_malformed_on_demand_names_are_400_naming_the_field(name: str) -> None:
    e = err(table(), name)
    assert (e.status, e.param, e.code) == (400, "model", "invalid_adapter_name")
    e = err(table(), "sdxl-base", [name])
    assert (e.status, e.param) == (400, "adapters[0].name")
