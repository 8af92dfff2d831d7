"""Is this hub repo a LoRA for our pool's base model? Pure checks on repo metadata.

Shared by the operator (a registered LoraAdapter's hub source) and the worker (the open catalog's on-demand
adapters), so both accept exactly the same repositories.

Takes a `huggingface_hub.ModelInfo` or anything shaped like it (attributes
or dict keys: sha, tags, card_data/cardData, base_models, siblings with
rfilename and size), so it is tested without a network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loraplex.families import LABELS, family_of_model, interchangeable, normalize_model

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_PREFERRED_WEIGHTS = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")


@dataclass(frozen=True)
class HubCheck:
    ok: bool
    reason: str
    message: str
    commit: str | None = None
    filename: str | None = None
    size: int | None = None


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, dict):
            if name in obj:
                return obj[name]
        elif hasattr(obj, name):
            value = getattr(obj, name)
            if value is not None:
                return value
        elif hasattr(obj, "get"):  # ModelCardData behaves like a mapping
            try:
                value = obj.get(name)
            except Exception:  # noqa: BLE001 - any odd mapping: treat as absent
                value = None
            if value is not None:
                return value
    return None


def declared_base_models(info: Any) -> set[str]:
    """Base models a repo declares: the card's base_model, the API's base_models, base_model:* tags."""
    found: set[str] = set()
    card = _get(info, "card_data", "cardData")
    values: list[Any] = []
    if card is not None:
        values.append(_get(card, "base_model"))
    values.append(_get(info, "base_models"))
    for value in values:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, Iterable):
            found.update(v for v in value if isinstance(v, str))
    for tag in _get(info, "tags") or []:
        if isinstance(tag, str) and tag.startswith("base_model:"):
            # "base_model:org/name" or "base_model:adapter:org/name" (relation-qualified)
            rest = tag[len("base_model:") :]
            found.add(rest.split(":", 1)[1] if ":" in rest else rest)
    return {normalize_model(b) for b in found if b}


def _siblings(info: Any) -> dict[str, int | None]:
    files: dict[str, int | None] = {}
    for sib in _get(info, "siblings") or []:
        name = _get(sib, "rfilename")
        if isinstance(name, str):
            size = _get(sib, "size")
            files[name] = size if isinstance(size, int) else None
    return files


def pick_weights(files: dict[str, int | None], filename: str | None) -> tuple[str | None, str, str]:
    """(file, reason, message): the safetensors file to load, or why there is none."""
    if filename:
        if filename not in files:
            return None, "FileNotFound", f"file {filename!r} is not in the repository"
        if not filename.endswith(".safetensors"):
            return None, "UnsafeFormat", f"file {filename!r} is not safetensors; pickle formats are refused"
        return filename, "", ""
    candidates = sorted(f for f in files if f.endswith(".safetensors"))
    for preferred in _PREFERRED_WEIGHTS:
        if preferred in candidates:
            return preferred, "", ""
    if len(candidates) == 1:
        return candidates[0], "", ""
    if len(candidates) > 1:
        return (
            None,
            "AmbiguousWeights",
            (
                f"several safetensors files ({', '.join(candidates[:5])}"
                f"{', ...' if len(candidates) > 5 else ''}); set spec.source.filename"
            ),
        )
    if any(f.endswith(_UNSAFE_SUFFIXES) for f in files):
        return None, "UnsafeFormat", "the repository only has pickle weights; only safetensors are loaded"
    return None, "NoWeights", "the repository has no safetensors file"


def check_hub_metadata(
    info: Any,
    pool_models: Iterable[str],
    filename: str | None = None,
    tag: str = "lora",
    pool_family: str | None = None,
) -> HubCheck:
    """Decide whether `info` describes a usable LoRA (tagged `tag`) for a pool serving any of `pool_models`.

    `pool_family` ("sdxl", "flux" or None when unknown): a LoRA whose declared bases are all of the other family is
    refused naming both families; a FLUX.1 [dev] LoRA is accepted by a FLUX.1 [schnell] pool (same architecture).
    """
    pool_models = list(pool_models)
    commit = _get(info, "sha")
    if not isinstance(commit, str) or not _COMMIT_RE.match(commit):
        return HubCheck(False, "NoCommit", "the hub did not report a commit for this revision")
    tags = {t.lower() for t in (_get(info, "tags") or []) if isinstance(t, str)}
    if tag.lower() not in tags:
        return HubCheck(False, "NotALora", f"the repository is not tagged {tag!r}", commit)
    bases = declared_base_models(info)
    wanted = {normalize_model(m) for m in pool_models if m}
    if not bases:
        return HubCheck(False, "BaseModelUnknown", "the repository declares no base_model (model card or tags)", commit)
    lora_families = {f for f in map(family_of_model, bases) if f}
    if pool_family and lora_families and pool_family not in lora_families:
        return HubCheck(
            False,
            "BaseModelFamilyMismatch",
            f"LoRA is for {', '.join(sorted(bases))} ({'/'.join(LABELS[f] for f in sorted(lora_families))}); "
            f"the pool serves a {LABELS[pool_family]} model ({', '.join(m for m in pool_models if m)})",
            commit,
        )
    if wanted and not any(interchangeable(b, w) for b in bases for w in wanted):
        return HubCheck(
            False,
            "BaseModelMismatch",
            f"LoRA is for {', '.join(sorted(bases))}; the pool serves {', '.join(sorted(wanted))}",
            commit,
        )
    files = _siblings(info)
    chosen, reason, message = pick_weights(files, filename)
    if chosen is None:
        return HubCheck(False, reason, message, commit)
    return HubCheck(True, "Resolved", f"{chosen} at commit {commit[:12]}", commit, chosen, files.get(chosen))
