"""CRDs on a real apiserver: established, samples accepted, every CEL rule enforced."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.operator_support import ROOT, kubectl

SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))


def dry_run(obj: dict[str, Any], namespace: str = "default") -> tuple[bool, str]:
    """Server-side dry run: full validation (schema, defaults, CEL) without storing anything."""
    out = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj), check=False)
    return out.returncode == 0, out.stdout + out.stderr


def test_crds_are_established_with_short_names_and_category(crds: None) -> None:
    out = kubectl("api-resources", "--api-group=loraplex.io", "-o", "wide").stdout
    assert "basemodelpools" in out and "bmp" in out and "loraadapters" in out and "lora" in out
    assert "loraplex" in out  # category
    kubectl("get", "bmp,lora", "-A")
    kubectl("get", "loraplex", "-A")


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_samples_are_accepted(crds: None, sample: Path) -> None:
    ok, out = dry_run(yaml.safe_load(sample.read_text()))
    assert ok, out


POOL = {
    "apiVersion": "loraplex.io/v1alpha1",
    "kind": "BaseModelPool",
    "metadata": {"name": "p"},
    "spec": {"model": {"name": "tiny"}},
}
ADAPTER = {
    "apiVersion": "loraplex.io/v1alpha1",
    "kind": "LoraAdapter",
    "metadata": {"name": "a"},
    "spec": {"pool": "p", "source": {"type": "path", "path": "/x.safetensors"}},
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = obj
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return obj


_DELETE = object()

# (object, the CEL rule's message): one case per x-kubernetes-validations rule in crds/.
CEL_CASES = [
    (_with(POOL, "metadata.name", "p" * 41), "a pool name is at most 40 characters"),
    (_with(_with(POOL, "spec.minReplicas", 3), "spec.maxReplicas", 2), "minReplicas must not exceed maxReplicas"),
    (_with(_with(POOL, "spec.replicas", 5), "spec.maxReplicas", 3), "replicas must be between minReplicas and"),
    (
        _with(POOL, "spec.autoscaling", {"scaleUpStabilizationSeconds": 600, "scaleDownStabilizationSeconds": 60}),
        "scaleDownStabilizationSeconds must be at least scaleUpStabilizationSeconds",
    ),
    (_with(POOL, "spec.limits", {"maxWidth": 1020}), "maxWidth and maxHeight must be multiples of 8"),
    (_with(POOL, "spec.openCatalog", {"enabled": True, "useToken": True}), "openCatalog.useToken needs hubTokenSecret"),
    (_with(ADAPTER, "metadata.name", "a" * 129), "an adapter name is at most 128 characters"),
    (_with(ADAPTER, "spec.aliases", ["a"]), "an alias must differ from the adapter's own name"),
    (_with(ADAPTER, "spec.pool", _DELETE), "set spec.pool or spec.baseModel"),
    (_with(_with(ADAPTER, "spec.minReplicas", 4), "spec.maxReplicas", 2), "minReplicas must not exceed maxReplicas"),
    (_with(ADAPTER, "spec.source", {"type": "hub"}), "a hub source needs repo"),
    (
        _with(ADAPTER, "spec.source", {"type": "url", "url": "https://x/y.safetensors"}),
        "a url source needs url and sha256",
    ),
    (_with(ADAPTER, "spec.source", {"type": "path"}), "a path source needs path"),
    (
        _with(ADAPTER, "spec.source", {"type": "url", "url": "http://x/y.safetensors", "sha256": "0" * 64}),
        "url must be https",
    ),
    (
        _with(ADAPTER, "spec.source", {"type": "path", "path": "/x", "repo": "org/repo"}),
        "repo, filename and tokenSecret apply to hub sources only",
    ),
]


def _all_rules() -> list[str]:
    messages = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []):
                messages.append(rule["message"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for crd in (ROOT / "crds").glob("*.yaml"):
        walk(yaml.safe_load(crd.read_text()))
    return messages


def test_every_cel_rule_has_a_case() -> None:
    covered = {msg for _, msg in CEL_CASES}
    for message in _all_rules():
        assert any(message.startswith(c) for c in covered), f"no test case for CEL rule: {message}"


@pytest.mark.parametrize(("obj", "message"), CEL_CASES, ids=[m[:40] for _, m in CEL_CASES])
def test_cel_rule_rejects(crds: None, obj: dict[str, Any], message: str) -> None:
    ok, out = dry_run(obj)
    assert not ok, f"accepted an invalid object:\n{yaml.safe_dump(obj)}"
    assert message in out, out


def test_defaults_are_applied_by_the_apiserver(crds: None) -> None:
    out = kubectl(
        "apply", "--dry-run=server", "-n", "default", "-o", "yaml", "-f", "-", input=yaml.safe_dump(POOL)
    ).stdout
    spec = yaml.safe_load(out)["spec"]
    assert spec["replicas"] == 1 and spec["autoscaling"]["targetUtilization"] == 0.7
    assert spec["gpu"] == {"resourceName": "nvidia.com/gpu", "count": 1}
    assert spec["image"] == "ghcr.io/loraplex/inference:0.1.0"


@pytest.mark.parametrize(
    ("ca_bundle", "field"),
    [
        ({}, "spec.adapterSources.caBundle.configMapName"),
        ({"configMapName": "Corp_CA"}, "spec.adapterSources.caBundle.configMapName"),
        ({"configMapName": "corp-ca", "key": "../etc/passwd"}, "spec.adapterSources.caBundle.key"),
        ({"configMapName": "corp-ca", "key": ""}, "spec.adapterSources.caBundle.key"),
    ],
)
def test_a_bad_ca_bundle_reference_is_refused_naming_the_field(
    crds: None, ca_bundle: dict[str, Any], field: str
) -> None:
    ok, out = dry_run(_with(POOL, "spec.adapterSources", {"caBundle": ca_bundle}))
    assert not ok and field in out, out


def test_a_ca_bundle_reference_gets_its_default_key(crds: None) -> None:
    pool = _with(POOL, "spec.adapterSources", {"caBundle": {"configMapName": "corp-ca"}})
    out = kubectl(
        "apply", "--dry-run=server", "-n", "default", "-o", "yaml", "-f", "-", input=yaml.safe_dump(pool)
    ).stdout
    assert yaml.safe_load(out)["spec"]["adapterSources"]["caBundle"] == {"configMapName": "corp-ca", "key": "ca.crt"}


def test_open_catalog_defaults_off_and_accepts_a_policy(crds: None) -> None:
    out = kubectl(
        "apply", "--dry-run=server", "-n", "default", "-o", "yaml", "-f", "-", input=yaml.safe_dump(POOL)
    ).stdout
    oc = yaml.safe_load(out)["spec"]["openCatalog"]
    assert oc["enabled"] is False and oc["requiredTag"] == "lora" and oc["maxFileMB"] == 512
    policy = {
        "enabled": True,
        "allowOwners": ["alice", "team-*"],
        "denyRepos": ["alice/nsfw-*"],
        "useToken": True,
        "endpoint": "https://hub.example.test",
    }
    ok, out = dry_run(_with(_with(POOL, "spec.openCatalog", policy), "spec.hubTokenSecret", {"name": "hf"}))
    assert ok, out


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"allowOwners": ["a/b"]}, "spec.openCatalog.allowOwners[0]"),
        ({"denyRepos": ["a/b/c"]}, "spec.openCatalog.denyRepos[0]"),
        ({"maxFileMB": 0}, "spec.openCatalog.maxFileMB"),
        ({"endpoint": "file:///etc/passwd"}, "spec.openCatalog.endpoint"),
    ],
)
def test_a_bad_open_catalog_is_refused_naming_the_field(crds: None, policy: dict[str, Any], field: str) -> None:
    ok, out = dry_run(_with(POOL, "spec.openCatalog", {"enabled": True, **policy}))
    assert not ok and field in out, out
