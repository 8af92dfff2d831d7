import hashlib
import socket

import pytest
import torch
from safetensors.torch import save_file

from inference_pod.adapters.sources import AdapterSourceError, fetch_to_disk
from loraplex.api.routing_table import AdapterEntry
from tests.helpers.file_server import FileServer

MB = 1 << 20


def entry(source: dict, revision: str = "") -> AdapterEntry:
    return AdapterEntry.model_validate({"pool": "p", "source": source, "revision": revision})


@pytest.fixture()
def lora_file(tmp_path):
    path = tmp_path / "src" / "style.safetensors"
    path.parent.mkdir()
    save_file({"unet.x.lora_A.weight": torch.zeros(2, 4), "unet.x.lora_B.weight": torch.zeros(4, 2)}, str(path))
    return path


def test_local_file_and_directory(lora_file, tmp_path):
    assert fetch_to_disk("a", entry({"type": "path", "path": str(lora_file)}), tmp_path / "c", MB) == lora_file
    assert fetch_to_disk("a", entry({"type": "path", "path": str(lora_file.parent)}), tmp_path / "c", MB) == lora_file


def test_pickle_files_are_refused_by_name_and_content(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\x80\x04fake pickle")
    with pytest.raises(AdapterSourceError, match="pickle"):
        fetch_to_disk("a", entry({"type": "path", "path": str(tmp_path / "w.bin")}), tmp_path / "c", MB)
    disguised = tmp_path / "d.safetensors"
    disguised.write_bytes(b"\x80\x04fake pickle with the right name")
    with pytest.raises(AdapterSourceError, match="pickle"):
        fetch_to_disk("a", entry({"type": "path", "path": str(disguised)}), tmp_path / "c", MB)


def test_missing_path_is_not_permanent(tmp_path):
    with pytest.raises(AdapterSourceError) as e:
        fetch_to_disk("a", entry({"type": "path", "path": str(tmp_path / "nope.safetensors")}), tmp_path / "c", MB)
    assert not e.value.permanent


def test_size_limit(lora_file, tmp_path):
    with pytest.raises(AdapterSourceError, match="over the limit"):
        fetch_to_disk("a", entry({"type": "path", "path": str(lora_file)}), tmp_path / "c", 10)


def test_url_with_sha256_is_fetched_once(lora_file, tmp_path):
    digest = hashlib.sha256(lora_file.read_bytes()).hexdigest()
    with FileServer(lora_file.parent) as srv:
        e = entry({"type": "url", "url": f"{srv.url}/style.safetensors", "sha256": digest})
        got = fetch_to_disk("a", e, tmp_path / "cache", MB)
        assert got.read_bytes() == lora_file.read_bytes()
        assert got.parent == tmp_path / "cache"
    # Served from the disk tier now that the server is gone.
    assert fetch_to_disk("a", e, tmp_path / "cache", MB) == got


def test_url_sha256_mismatch_and_404(lora_file, tmp_path):
    with FileServer(lora_file.parent) as srv:
        bad = entry({"type": "url", "url": f"{srv.url}/style.safetensors", "sha256": "0" * 64})
        with pytest.raises(AdapterSourceError, match="sha256 mismatch") as e:
            fetch_to_disk("a", bad, tmp_path / "cache", MB)
        assert e.value.permanent
        with pytest.raises(AdapterSourceError, match="404") as e:
            fetch_to_disk("b", entry({"type": "url", "url": f"{srv.url}/missing.safetensors"}), tmp_path / "c", MB)
        assert e.value.permanent
    assert list((tmp_path / "cache").glob("*")) == []  # nothing half-written is left


def test_unreachable_url_is_transient(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AdapterSourceError, match="cannot reach") as e:
        fetch_to_disk("a", entry({"type": "url", "url": f"http://127.0.0.1:{port}/a.safetensors"}), tmp_path, MB, 2)
    assert not e.value.permanent


def test_hub_source_offline_is_a_clear_transient_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    e = entry(
        {
            "type": "hub",
            "repo": "someone/some-lora",
            "revision": "abc123",
            "filename": "pytorch_lora_weights.safetensors",
        }
    )
    with pytest.raises(AdapterSourceError, match="someone/some-lora@abc123"):
        fetch_to_disk("a", e, tmp_path, MB)


def test_hub_pickle_filename_refused(tmp_path):
    e = entry({"type": "hub", "repo": "someone/some-lora", "filename": "model.ckpt"})
    with pytest.raises(AdapterSourceError, match="pickle") as err:
        fetch_to_disk("a", e, tmp_path, MB)
    assert err.value.permanent
