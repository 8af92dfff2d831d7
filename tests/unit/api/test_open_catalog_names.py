"""Open catalog contract: on-demand names (hostile ones refused, naming the part) and the pool's allow/deny policy."""

from __future__ import annotations

import pytest

from loraplex.api.open_catalog import (
    HubRef,
    OnDemandNameError,
    OpenCatalogPolicy,
    dump_policy,
    parse_on_demand,
    parse_policy,
)


@pytest.mark.parametrize(
    ("name", "pool", "ref"),
    [
        ("alice/ink", None, HubRef("alice", "ink")),
        ("alice/ink-v2.1_x", None, HubRef("alice", "ink-v2.1_x")),
        ("alice/ink@v1.0", None, HubRef("alice", "ink", "v1.0")),
        ("alice/ink@" + "a" * 40, None, HubRef("alice", "ink", "a" * 40)),
        ("alice/ink:ink.safetensors", None, HubRef("alice", "ink", "main", "ink.safetensors")),
        ("sdxl/alice/ink@dev:w.safetensors", "sdxl", HubRef("alice", "ink", "dev", "w.safetensors")),
    ],
)
def test_valid_names_parse(name: str, pool: str | None, ref: HubRef) -> None:
    assert parse_on_demand(name) == (pool, ref)


def test_canonical_name_leaves_defaults_out() -> None:
    assert HubRef("a", "b").name == "a/b"
    assert HubRef("a", "b", "main", "w.safetensors").name == "a/b:w.safetensors"
    assert HubRef("a", "b", "v2").name == "a/b@v2"
    _, ref = parse_on_demand("p/a/b@v2:w.safetensors")
    assert parse_on_demand(ref.name) == (None, ref)


@pytest.mark.parametrize(
    ("name", "part"),
    [
        ("", "empty"),
        ("alice/" + "x" * 300, "over 256"),
        ("alice/../etc", "the owner"),
        ("../alice/ink", "the pool"),
        ("alice/..", "the repo"),
        ("alice/ink/extra/more", "owner/repo"),
        ("alice", "owner/repo"),
        ("alice//ink", "the owner"),
        ("alice/ink%2F..", "the repo"),
        ("alice/%2e%2e", "the repo"),
        ("alice/ink\\x", "the repo"),
        ("alice/in k", "the repo"),
        ("alice/ink\n", "the repo"),
        ("alice/ink.git", "the repo"),
        ("al--ice/ink", "the owner"),
        ("-alice/ink", "the owner"),
        ("alice/ink@", "revision"),
        ("alice/ink@refs/pr/1", "revision"),
        ("alice/ink@..", "revision"),
        ("alice/ink@v1%00", "revision"),
        ("alice/ink:../x.safetensors", "weight file"),
        ("alice/ink:sub/x.safetensors", "weight file"),
        ("alice/ink:x.bin", "weight file"),
        ("alice/ink:x.ckpt", "weight file"),
        ("alice/ink:.safetensors", "weight file"),
        ("alice/ink:a..safetensors", "weight file"),
        ("alice/ink:x.safetensors:y", "weight file"),
        ("alice/ínk", "the repo"),
    ],
)
def test_hostile_names_are_refused_naming_the_part(name: str, part: str) -> None:
    with pytest.raises(OnDemandNameError) as e:
        parse_on_demand(name)
    assert part in str(e.value)
    assert name[3:] not in str(e.value) or len(name) < 4  # the message explains; it does not echo


def test_policy_allow_and_deny() -> None:
    open_all = OpenCatalogPolicy(enabled=True)
    assert open_all.refusal(HubRef("anyone", "x")) is None
    p = OpenCatalogPolicy(
        enabled=True,
        allow_owners=("alice", "team-*"),
        allow_repos=("bob/ink",),
        deny_repos=("alice/bad*",),
        deny_owners=("team-evil",),
    )
    assert p.refusal(HubRef("alice", "ink")) is None
    assert p.refusal(HubRef("Alice", "Ink")) is None  # hub ids are case-insensitive
    assert p.refusal(HubRef("team-a", "x")) is None
    assert p.refusal(HubRef("bob", "ink")) is None
    assert "not in" in (p.refusal(HubRef("bob", "other")) or "")
    assert "denied" in (p.refusal(HubRef("alice", "bad-one")) or "")
    assert "denied" in (p.refusal(HubRef("team-evil", "x")) or "")  # a deny wins over an allow
    only_deny = OpenCatalogPolicy(enabled=True, deny_owners=("mallory",))
    assert only_deny.refusal(HubRef("alice", "x")) is None
    assert only_deny.refusal(HubRef("mallory", "x")) is not None


def test_policy_document_round_trips_and_is_strict() -> None:
    p = OpenCatalogPolicy(enabled=True, allow_owners=("alice",), max_file_bytes=1000, use_token=True)
    assert parse_policy(dump_policy(p)) == p
    assert '"allowOwners"' in dump_policy(p)
    with pytest.raises(ValueError, match="maxFileBytes"):
        parse_policy('{"enabled": true, "maxFileBytes": 0}')
    with pytest.raises(ValueError, match="unknown"):
        parse_policy('{"enabled": true, "unknown": 1}')
    with pytest.raises(ValueError, match=r"allowOwners\[0\]"):
        parse_policy('{"enabled": true, "allowOwners": ["a b"]}')
    with pytest.raises(ValueError, match="endpoint"):
        parse_policy('{"enabled": true, "endpoint": "file:///etc"}')
    with pytest.raises(ValueError, match="JSON"):
        parse_policy("{")
