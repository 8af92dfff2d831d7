"""Fetch an adapter's safetensors file from its source into the local disk tier.

Sources: a local path (file, or a directory holding one .safetensors file),
an http(s) URL checked against its sha256, or a hub repo through
huggingface_hub (revision, filename, token). Pickle formats are refused by
name and by content. Failures raise `AdapterSourceError` with a message a
user can act on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from inference_pod.adapters.formats import AdapterFormatError, check_safetensors_header
from loraplex.api.routing_table import AdapterEntry, HubSource, PathSource, UrlSource
from loraplex.egress import EgressRefused, check_host

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PREFERRED_NAMES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")


class AdapterSourceError(Exception):
    """The adapter could not be fetched. `permanent` errors are remembered as bad."""

    def __init__(self, message: str, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


def _refuse_pickle(name: str) -> None:
    if name.endswith(PICKLE_SUFFIXES):
        raise AdapterSourceError(f"{name}: pickle-based files are refused; publish the adapter as .safetensors")
    if not name.endswith(".safetensors"):
        raise AdapterSourceError(f"{name}: only .safetensors adapter files are loaded")


def _pick_file(names: list[str]) -> str:
    safes = [n for n in names if n.endswith(".safetensors")]
    for pref in PREFERRED_NAMES:
        for n in safes:
            if n.rsplit("/", 1)[-1] == pref:
                return n
    if len(safes) == 1:
        return safes[0]
    if not safes:
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise AdapterSourceError(f"only pickle files found ({pickles[0]}); refused, use .safetensors")
        raise AdapterSourceError("no .safetensors file found in the adapter source")
    raise AdapterSourceError(f"several .safetensors files ({', '.join(sorted(safes)[:4])}); name one with filename")


def source_key(name: str, entry: AdapterEntry) -> str:
    """A stable key for the bytes this entry points at (changes when its source does)."""
    src = entry.source.model_dump_json()
    return hashlib.sha256(f"{name}|{entry.revision}|{src}".encode()).hexdigest()[:32]


def fetch_to_disk(name: str, entry: AdapterEntry, cache_dir: Path, max_bytes: int, timeout_s: float = 60.0) -> Path:
    """Return a local path to the adapter's .safetensors, fetching it into cache_dir if needed."""
    src = entry.source
    if isinstance(src, PathSource):
        path = _resolve_local(Path(src.path))
        _check_size(path, max_bytes)
        _check_header(path)
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{source_key(name, entry)}.safetensors"
    if target.exists():
        os.utime(target)  # LRU order for the disk tier
        return target
    if isinstance(src, UrlSource):
        _download_url(src, target, max_bytes, timeout_s)
    elif isinstance(src, HubSource):
        _download_hub(src, target, max_bytes)
    else:  # pragma: no cover - the table's discriminator admits nothing else
        raise AdapterSourceError(f"unknown source type {type(src).__name__}")
    try:
        _check_header(target)
    except AdapterSourceError:
        target.unlink(missing_ok=True)
        raise
    return target


def _resolve_local(path: Path) -> Path:
    if not path.exists():
        raise AdapterSourceError(f"path {path} does not exist", permanent=False)
    if path.is_dir():
        path = path / _pick_file([p.name for p in path.iterdir() if p.is_file()])
    _refuse_pickle(path.name)
    return path


def _check_size(path: Path, max_bytes: int) -> None:
    size = path.stat().st_size
    if size > max_bytes:
        raise AdapterSourceError(f"adapter file is {size} bytes, over the limit of {max_bytes}")


def _check_header(path: Path) -> None:
    try:
        check_safetensors_header(path)
    except AdapterFormatError as e:
        raise AdapterSourceError(str(e)) from e


def _download_url(src: UrlSource, target: Path, max_bytes: int, timeout_s: float) -> None:
    path_part = src.url.split("?", 1)[0]
    if path_part.endswith(PICKLE_SUFFIXES):
        _refuse_pickle(path_part)
    digest = hashlib.sha256()
    try:
        check_host(urllib.parse.urlsplit(src.url).hostname)
    except EgressRefused as e:
        raise AdapterSourceError(f"url source refused: {e}") from e
    tmp = tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part")  # noqa: SIM115 - renamed into place
    try:
        with tmp, urllib.request.urlopen(src.url, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only by schema
            total = 0
            while chunk := resp.read(1 << 20):
                total += len(chunk)
                if total > max_bytes:
                    raise AdapterSourceError(f"download exceeds the limit of {max_bytes} bytes")
                digest.update(chunk)
                tmp.write(chunk)
        if src.sha256 and digest.hexdigest() != src.sha256:
            raise AdapterSourceError(f"sha256 mismatch: expected {src.sha256}, got {digest.hexdigest()}")
        os.replace(tmp.name, target)
    except urllib.error.HTTPError as e:
        raise AdapterSourceError(f"GET {src.url} answered {e.code}", permanent=e.code in (401, 403, 404, 410)) from e
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise AdapterSourceError(f"cannot reach {src.url}: {e}", permanent=False) from e
    finally:
        Path(tmp.name).unlink(missing_ok=True)


def _download_hub(src: HubSource, target: Path, max_bytes: int) -> None:
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    token = os.environ.get(src.token_env) if src.token_env else None
    try:
        filename = src.filename
        if filename is None:
            filename = _pick_file(huggingface_hub.list_repo_files(src.repo, revision=src.revision, token=token))
        _refuse_pickle(filename)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmpdir:
            local = huggingface_hub.hf_hub_download(
                src.repo, filename, revision=src.revision, token=token, cache_dir=tmpdir
            )
            _check_size(Path(local), max_bytes)
            shutil.copyfile(local, target)
    except AdapterSourceError:
        raise
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise AdapterSourceError(f"hub {src.repo}@{src.revision}: {e}", permanent=status in (401, 403, 404)) from e
    except Exception as e:  # network errors from the hub client come in many types
        raise AdapterSourceError(f"hub {src.repo}@{src.revision} unreachable: {e}", permanent=False) from e
