"""The open catalog contract: on-demand hub adapter names and a pool's policy for them.

A pool with an open catalog serves, besides its registered adapters, any hub repository its policy admits, named
in a request as

    owner/repo[@revision][:weight-file.safetensors]     (optionally prefixed by a pool or pool alias: pool/owner/repo)

- owner and repo: the hub's repo-id alphabet (letters, digits, `-`, `_`, `.`), 1-96 characters each, starting with
  a letter or digit, no `--` or `..`, not ending in `.` or `.git`;
- revision: a branch or tag name or a commit (same alphabet, 1-64 characters, no `..`), default `main`;
- weight file: one file name at the top of the repository (same alphabet, 1-128 characters, ending in
  `.safetensors`); default: chosen as diffusers does (`pytorch_lora_weights.safetensors`, else the only one).

Everything else (`/` in a file or revision, `%`, `\\`, spaces, control characters, over 256 characters) is refused
with a message naming the field: nothing of a hostile name reaches a URL or a path. The policy travels as one
JSON document (the worker's `--open-catalog`), the same model the operator renders from `spec.openCatalog`.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

MAX_NAME_CHARS: Final = 256
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,115}\.safetensors$")
_GLOB = re.compile(r"^[A-Za-z0-9._*?-]{1,96}(/[A-Za-z0-9._*?-]{1,96})?$")
DEFAULT_REVISION: Final = "main"


class OnDemandNameError(ValueError):
    """A name that is not a valid on-demand adapter name; the message says which part is wrong."""


@dataclass(frozen=True)
class HubRef:
    """One on-demand adapter: a hub repo, a revision (branch, tag or commit) and optionally a named weight file."""

    owner: str
    repo: str
    revision: str = DEFAULT_REVISION
    filename: str | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.owner}/{self.repo}"

    @property
    def name(self) -> str:
        """The canonical name (defaults left out): the adapter's name in the tiers and its placement key."""
        out = self.repo_id
        if self.revision != DEFAULT_REVISION:
            out += f"@{self.revision}"
        if self.filename:
            out += f":{self.filename}"
        return out


def _segment(value: str, what: str) -> str:
    if not _SEGMENT.fullmatch(value) or ".." in value or "--" in value or value.endswith((".", ".git")):
        raise OnDemandNameError(
            f"{what} must be 1-96 letters, digits, '-', '_' or '.', start with a letter or digit, "
            "and contain no '--' or '..'"
        )
    return value


def parse_on_demand(name: str) -> tuple[str | None, HubRef]:
    """(pool qualifier or None, the hub reference) of `[pool/]owner/repo[@revision][:file]`; OnDemandNameError."""
    if not isinstance(name, str) or not name:
        raise OnDemandNameError("the name is empty")
    if len(name) > MAX_NAME_CHARS:
        raise OnDemandNameError(f"the name is over {MAX_NAME_CHARS} characters")
    rest, filename = name, None
    if ":" in rest:
        rest, filename = rest.split(":", 1)
        if not _FILENAME.fullmatch(filename) or ".." in filename:
            raise OnDemandNameError(
                "the weight file (after ':') must be one file name of letters, digits, '-', '_' or '.' ending in "
                "'.safetensors' (no '/', no '..')"
            )
    revision = DEFAULT_REVISION
    if "@" in rest:
        rest, revision = rest.split("@", 1)
        if not _REVISION.fullmatch(revision) or ".." in revision:
            raise OnDemandNameError(
                "the revision (after '@') must be 1-64 letters, digits, '-', '_' or '.' (no '/', no '..')"
            )
    parts = rest.split("/")
    if len(parts) not in (2, 3):
        raise OnDemandNameError("an on-demand adapter is named owner/repo (optionally pool/owner/repo)")
    pool = parts[0] if len(parts) == 3 else None
    if pool is not None:
        _segment(pool, "the pool")
    owner, repo = _segment(parts[-2], "the owner"), _segment(parts[-1], "the repo")
    return pool, HubRef(owner, repo, revision, filename)


def looks_on_demand(name: str) -> bool:
    """Whether a name is shaped like an on-demand adapter (has a '/'); such a name is then parsed strictly."""
    return "/" in name


class OpenCatalogPolicy(BaseModel):
    """Which hub adapters a pool serves on demand (spec.openCatalog of a BaseModelPool, camelCase in JSON).

    - allow/deny: globs over `owner` (allowOwners/denyOwners) and `owner/repo` (allowRepos/denyRepos); a deny
      always wins; with no allow list at all, any owner is allowed.
    - baseModels: hub ids accepted as the adapter's base model besides the pool's own model (e.g. a finetune of it
      with the same architecture); the worker still checks every key and shape against the loaded model.
    - requiredTag: the tag the repo must carry (the hub's `lora`).
    - maxFileBytes: the weight file's size cap, checked from the hub's metadata before any download.
    - useToken: whether the pool's hub token may be sent for on-demand look-ups and downloads (gated or private
      repos); off: the token is never sent, and gated or private repos are refused.
    - TTLs: how long a look-up's answer is kept (positive, and negative: refusals and an unreachable hub).
    - endpoint: the hub's base URL (default: huggingface_hub's, HF_ENDPOINT).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    enabled: bool = False
    allow_owners: tuple[str, ...] = ()
    allow_repos: tuple[str, ...] = ()
    deny_owners: tuple[str, ...] = ()
    deny_repos: tuple[str, ...] = ()
    base_models: tuple[str, ...] = ()
    required_tag: str = Field(default="lora", min_length=1, max_length=64)
    max_file_bytes: int = Field(default=512 << 20, ge=1)
    use_token: bool = False
    positive_ttl_seconds: float = Field(default=3600.0, ge=0.0)
    negative_ttl_seconds: float = Field(default=300.0, ge=0.0)
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+/?$")
    max_cached: int = Field(default=10000, ge=1)

    def refusal(self, ref: HubRef) -> str | None:
        """Why the policy refuses this repo (None: allowed). Pure; case-insensitive, like hub ids."""
        owner, repo_id = ref.owner.lower(), ref.repo_id.lower()
        if any(fnmatch.fnmatchcase(owner, g.lower()) for g in self.deny_owners):
            return f"owner {ref.owner!r} is denied by this pool's open catalog"
        if any(fnmatch.fnmatchcase(repo_id, g.lower()) for g in self.deny_repos):
            return f"repository {ref.repo_id!r} is denied by this pool's open catalog"
        if not self.allow_owners and not self.allow_repos:
            return None
        if any(fnmatch.fnmatchcase(owner, g.lower()) for g in self.allow_owners):
            return None
        if any(fnmatch.fnmatchcase(repo_id, g.lower()) for g in self.allow_repos):
            return None
        return f"repository {ref.repo_id!r} is not in this pool's open catalog allow lists"


def check_globs(globs: tuple[str, ...], field: str) -> None:
    """Raise ValueError naming the field when a glob holds characters a hub id never has."""
    for i, g in enumerate(globs):
        if not _GLOB.fullmatch(g):
            raise ValueError(f"{field}[{i}]: a glob over hub ids: letters, digits, '-', '_', '.', '*', '?', one '/'")


def parse_policy(doc: str) -> OpenCatalogPolicy:
    """The policy from its JSON document; ValueError naming the field."""
    try:
        policy = OpenCatalogPolicy.model_validate(json.loads(doc))
    except (ValueError, ValidationError) as e:
        if isinstance(e, ValidationError):
            parts = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
            raise ValueError("; ".join(parts)) from None
        raise ValueError(f"not valid JSON: {e}") from None
    for field in ("allow_owners", "deny_owners", "allow_repos", "deny_repos"):
        check_globs(getattr(policy, field), to_camel(field))
    return policy


def dump_policy(policy: OpenCatalogPolicy) -> str:
    return json.dumps(policy.model_dump(mode="json", by_alias=True, exclude_defaults=True), sort_keys=True)
