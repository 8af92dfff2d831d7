"""The pool's admission rules for adapter sources (logic/sources.py), and that status and table agree."""

from __future__ import annotations

import pytest

from loraplex_operator.logic.routes import build_table
from loraplex_operator.logic.sources import path_problem, source_problem, url_problem
from loraplex_operator.logic.specs import AdapterSource


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/x.safetensors",
        "https://169.254.169.254/latest/meta-data",
        "https://10.96.0.1:443/api",  # an apiserver ClusterIP
        "https://192.168.1.10/x",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://0.0.0.0/x",
        "https://2130706433/x",  # 127.0.0.1 in inet_aton's decimal form
        "https://0x7f.1/x",
        "https://localhost/x",
        "https://foo.localhost/x",
        "https://kubernetes.default.svc/api",
        "https://kubernetes/api",
        "https://minio.storage.svc.cluster.local/x",
        "https://metadata.google.internal/x",
        "https://LOCALHOST./x",
    ],
)
def test_private_hosts_are_refused_unless_the_pool_allows_them(url: str) -> None:
    problem = url_problem(url)
    assert problem is not None and "spec.source.url" in problem and "allowPrivateUrls" in problem
    assert url_problem(url, allow_private=True) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://loras.example.com/x", "https"),
        ("file:///etc/passwd", "https"),
        ("https:///x", "no host"),
        ("https://u:p@loras.example.com/x", "credentials"),
        ("https://loras.example.com:99999/x", "not a valid URL"),
    ],
)
def test_malformed_urls_are_refused(url: str, words: str) -> None:
    problem = url_problem(url, allow_private=True)
    assert problem is not None and words in problem


def test_public_hosts_are_admitted() -> None:
    for url in ("https://loras.example.com/web.safetensors", "https://8.8.8.8/x", "https://[2001:4860::8888]/x"):
        assert url_problem(url) is None, url


def test_paths_must_be_absolute_and_under_a_root() -> None:
    assert path_problem("/models/loras/a.safetensors") is None
    assert path_problem("/models/loras") is None
    assert path_problem("/models/loras/sub/./a.safetensors") is None
    for bad, words in (
        ("loras/a.safetensors", "absolute"),
        ("/models/loras/../../etc/passwd", "'..'"),
        ("/models/lorasx/a", "pathRoots"),
        ("/etc/passwd", "pathRoots"),
    ):
        problem = path_problem(bad)
        assert problem is not None and words in problem and "spec.source.path" in problem, bad
    assert path_problem("/data/a.safetensors", ["/data", "/models/loras"]) is None
    assert path_problem("/data/a", []) is not None


def test_hub_sources_are_not_checked_here() -> None:
    assert source_problem(AdapterSource(type="hub", repo="org/x")) is None


def _pool(**sources: object) -> dict:
    return {
        "apiVersion": "loraplex.io/v1alpha1",
        "kind": "BaseModelPool",
        "metadata": {"name": "sdxl", "namespace": "ns", "uid": "u"},
        "spec": {"model": {"name": "org/sdxl"}, "adapterSources": sources},
    }


def _adapter(name: str, source: dict) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "generation": 1}, "spec": {"pool": "sdxl", "source": source}}


def test_the_table_routes_only_admitted_sources() -> None:
    adapters = [
        _adapter("meta", {"type": "url", "url": "https://169.254.169.254/x", "sha256": "a" * 64}),
        _adapter("rel", {"type": "path", "path": "loras/a.safetensors"}),
        _adapter("ok", {"type": "path", "path": "/models/loras/a.safetensors"}),
    ]
    assert set(build_table([_pool()], adapters, {}).table.adapters) == {"ok"}
    allowing = _pool(allowPrivateUrls=True, pathRoots=["/models/loras"])
    assert set(build_table([allowing], adapters, {}).table.adapters) == {"ok", "meta"}
