"""Split a routing table into ConfigMap shards. Pure and deterministic.

- Adapters go to shard `stable_hash(name) % n`; n is a power of two, the
  smallest for which every shard fits the byte budget (a ConfigMap holds at
  most 1 MiB). Doubling n splits each shard in two, so growth moves little.
- Pools (with their endpoints) live in shard 0 only, so a pod becoming ready
  rewrites one ConfigMap, not all of them.
- Shard 0 also carries `generation`: a hash of the whole table, which the
  sidecars report in /v1/stats, so anyone can tell which table they run.
- Same table in, same bytes out; `plan` compares with what exists so that
  nothing is written when nothing changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loraplex.api.routing_table import SCHEMA_VERSION, AdapterEntry, RoutingTable, adapter_doc, dump_table
from loraplex_operator import constants as c
from loraplex_operator.logic.manifests import owner_reference

CONFIGMAP_LIMIT = 1024 * 1024  # apiserver limit on a ConfigMap's data
DEFAULT_BUDGET = 512 * 1024  # target bytes per shard: room for growth before a split
HARD_LIMIT = 1000 * 1024  # never write a shard above this (metadata needs room too)
MAX_SHARDS = 256


class ShardingError(ValueError):
    """The table cannot be split under the limit (an absurdly large single entry)."""


def stable_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def table_generation(canonical_table: str) -> int:
    # 48 bits: exact in JSON numbers everywhere (JavaScript's 2**53 included).
    return int.from_bytes(hashlib.sha256(canonical_table.encode()).digest()[:6], "big")


class SplitMemo:
    """Each adapter's canonical JSON from the last split, reused while its entry is the same (BuildMemo keeps it so)."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[AdapterEntry, str]] = {}


def _entry_texts(adapters: dict[str, AdapterEntry], memo: SplitMemo | None) -> dict[str, str]:
    old = memo.texts if memo is not None else {}
    texts: dict[str, str] = {}
    kept: dict[str, tuple[AdapterEntry, str]] = {}
    for name, entry in adapters.items():
        cached = old.get(name)
        if cached is not None and (cached[0] is entry or cached[0] == entry):
            text = cached[1]
        else:
            text = _canonical(adapter_doc(entry))
        texts[name] = text
        kept[name] = (entry, text)
    if memo is not None:
        memo.texts = kept
    return texts


def _adapters_object(names: Sequence[str], pairs: Mapping[str, str]) -> str:
    """`_canonical({name: entry, ...})` for sorted `names`, joined from each `"name":entry` text."""
    return "{" + ",".join(pairs[n] for n in names) + "}"


def split_table(table: RoutingTable, budget: int = DEFAULT_BUDGET, memo: SplitMemo | None = None) -> list[str]:
    """Shard documents (JSON strings), shard 0 first.

    The bytes are `_canonical` of each shard's document, assembled from each
    entry's canonical text (sorted keys, so joining sorted names is the same
    string); `memo` keeps those texts between calls.
    """
    pools_text = _canonical(json.loads(dump_table(RoutingTable(pools=table.pools))).get("pools", {}))
    texts = _entry_texts(dict(table.adapters), memo)
    names = sorted(texts)
    pairs = {n: json.dumps(n, ensure_ascii=False) + ":" + texts[n] for n in names}  # as _canonical writes a key
    entry_bytes = {n: len(pairs[n]) + 2 for n in names}  # len(_canonical({n: entry}))
    generation = table_generation('{"adapters":' + _adapters_object(names, pairs) + ',"pools":' + pools_text + "}")
    pools_bytes = len(pools_text)
    total = pools_bytes + sum(entry_bytes.values())
    n = 1
    while n * budget < total and n < MAX_SHARDS:
        n *= 2
    hashes = {name: stable_hash(name) for name in names}
    while True:
        sizes = [200 + (pools_bytes if i == 0 else 0) for i in range(n)]
        for name, size in entry_bytes.items():
            sizes[hashes[name] % n] += size
        if max(sizes) <= budget or n >= MAX_SHARDS:
            break
        n *= 2
    members: list[list[str]] = [[] for _ in range(n)]
    for name in names:  # sorted, so each shard's list is too
        members[hashes[name] % n].append(name)
    docs = []
    for i in range(n):
        # Keys in sorted order, as _canonical writes them: adapters, generation, pools, version.
        text = '{"adapters":' + _adapters_object(members[i], pairs)
        if i == 0:
            text += f',"generation":{generation},"pools":{pools_text}'
        text += f',"version":{SCHEMA_VERSION}}}'
        if len(text.encode()) > HARD_LIMIT:
            raise ShardingError(f"shard {i} of {n} is {len(text.encode())} bytes, over {HARD_LIMIT}")
        docs.append(text)
    return docs


def shard_name(i: int) -> str:
    return f"{c.TABLE_CONFIGMAP_PREFIX}-{i}"


def shard_configmaps(namespace: str, docs: Sequence[str], owners: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """ConfigMaps for the shards, owned by every pool of the namespace (GC'd with the last one)."""
    refs = [
        dict(owner_reference(o), controller=False, blockOwnerDeletion=False)
        for o in sorted(owners, key=lambda o: o["metadata"]["name"])
    ]
    out = []
    for i, doc in enumerate(docs):
        annotations = {
            c.ANNOTATION_SHARDS: str(len(docs)),
            c.ANNOTATION_SHARD_HASH: hashlib.sha256(doc.encode()).hexdigest(),
        }
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": shard_name(i),
                    "namespace": namespace,
                    "labels": {
                        c.LABEL_ROUTING_TABLE: "true",
                        c.LABEL_SHARD: str(i),
                        c.LABEL_MANAGED_BY: c.MANAGED_BY,
                    },
                    "annotations": annotations,
                    "ownerReferences": refs,
                },
                "data": {c.TABLE_DATA_KEY: doc},
            }
        )
    return out


def empty_table_configmaps(namespace: str) -> list[dict[str, Any]]:
    """The table of a namespace with no pool left: one empty shard, marked as meant to be empty.

    Sidecars refuse a drop to an empty table unless a shard carries this marker
    (`ANNOTATION_TABLE_EMPTY`), so shards deleted or emptied by hand never take routing down.
    It has no owner (there is no pool left to own it); the next pool's table replaces it.
    """
    cms = shard_configmaps(namespace, split_table(RoutingTable()), [])
    for cm in cms:
        cm["metadata"]["annotations"][c.ANNOTATION_TABLE_EMPTY] = "true"
    return cms


def is_empty_marker(cm: dict[str, Any]) -> bool:
    return ((cm.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_TABLE_EMPTY) == "true"


@dataclass(frozen=True)
class WritePlan:
    create: tuple[dict[str, Any], ...]
    update: tuple[dict[str, Any], ...]
    delete: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def _same(desired: dict[str, Any], existing: dict[str, Any]) -> bool:
    dm, em = desired["metadata"], existing.get("metadata") or {}
    if (existing.get("data") or {}) != desired["data"]:
        return False
    for key in ("labels", "annotations"):
        have = em.get(key) or {}
        if any(have.get(k) != v for k, v in dm[key].items()):
            return False
    have_owners = sorted((r.get("uid"), r.get("name")) for r in em.get("ownerReferences") or [])
    want_owners = sorted((r["uid"], r["name"]) for r in dm["ownerReferences"])
    return have_owners == want_owners


def plan(desired: Sequence[dict[str, Any]], existing: Sequence[dict[str, Any]]) -> WritePlan:
    """What to write so that `existing` shards become `desired`; nothing when they already are.

    Creates and updates come before deletes in the caller's order, so a reader
    merging shards mid-way sees extra (stale) entries, never missing ones.
    """
    have = {cm["metadata"]["name"]: cm for cm in existing}
    want = {cm["metadata"]["name"] for cm in desired}
    create, update = [], []
    for cm in desired:
        old = have.get(cm["metadata"]["name"])
        if old is None:
            create.append(cm)
        elif not _same(cm, old):
            update.append(cm)
    delete = tuple(sorted(n for n in have if n not in want))
    return WritePlan(tuple(create), tuple(update), delete)
