import hashlib
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from inference_pod.adapters.sources import AdapterSourceError, SourcePolicy, fetch_to_disk
from loraplex.api.routing_table import AdapterEntry
from tests.helpers.file_server import FileServer

MB = 1 << 20
# The test servers are on loopback and the files under /tmp.
OPEN = SourcePolicy(allow_private=True, path_roots=(Path("/"),))


def fetch(*args, policy: SourcePolicy = OPEN, **kw):
    return fetch_to_disk(*args, policy=policy, **kw)


def entry(source: dict, revision: str = "") -> AdapterEntry:
    return AdapterEntry.model_validate({"pool": "p", "source": source, "revision": revision})


@pytest.fixture()
def lora_file(tmp_path):
    path = tmp_path / "src" / "style.safetensors"
    path.parent.mkdir()
    save_file({"unet.x.lora_A.weight": torch.zeros(2, 4), "unet.x.lora_B.weight": torch.zeros(4, 2)}, str(path))
    return path


def test_local_file_and_directory(lora_file, tmp_path):
    assert fetch("a", entry({"type": "path", "path": str(lora_file)}), tmp_path / "c", MB) == lora_file
    assert fetch("a", entry({"type": "path", "path": str(lora_file.parent)}), tmp_path / "c", MB) == lora_file


def test_pickle_files_are_refused_by_name_and_content(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\x80\x04fake pickle")
    with pytest.raises(AdapterSourceError, match="pickle"):
        fetch("a", entry({"type": "path", "path": str(tmp_path / "w.bin")}), tmp_path / "c", MB)
    disguised = tmp_path / "d.safetensors"
    disguised.write_bytes(b"\x80\x04fake pickle with the right name")
    with pytest.raises(AdapterSourceError, match="pickle"):
        fetch("a", entry({"type": "path", "path": str(disguised)}), tmp_path / "c", MB)


def test_missing_path_is_not_permanent(tmp_path):
    with pytest.raises(AdapterSourceError) as e:
        fetch("a", entry({"type": "path", "path": str(tmp_path / "nope.safetensors")}), tmp_path / "c", MB)
    assert not e.value.permanent


def test_size_limit(lora_file, tmp_path):
    with pytest.raises(AdapterSourceError, match="over the limit"):
        fetch("a", entry({"type": "path", "path": str(lora_file)}), tmp_path / "c", 10)


def test_url_with_sha256_is_fetched_once(lora_file, tmp_path):
    digest = hashlib.sha256(lora_file.read_bytes()).hexdigest()
    with FileServer(lora_file.parent) as srv:
        e = entry({"type": "url", "url": f"{srv.url}/style.safetensors", "sha256": digest})
        got = fetch("a", e, tmp_path / "cache", MB)
        assert got.read_bytes() == lora_file.read_bytes()
        assert got.parent == tmp_path / "cache"
    # Served from the disk tier now that the server is gone.
    assert fetch("a", e, tmp_path / "cache", MB) == got


def test_url_sha256_mismatch_and_404(lora_file, tmp_path):
    with FileServer(lora_file.parent) as srv:
        bad = entry({"type": "url", "url": f"{srv.url}/style.safetensors", "sha256": "0" * 64})
        with pytest.raises(AdapterSourceError, match="sha256 mismatch") as e:
            fetch("a", bad, tmp_path / "cache", MB)
        assert e.value.permanent
        with pytest.raises(AdapterSourceError, match="404") as e:
            fetch("b", entry({"type": "url", "url": f"{srv.url}/missing.safetensors"}), tmp_path / "c", MB)
        assert e.value.permanent
    assert list((tmp_path / "cache").glob("*")) == []  # nothing half-written is left


def test_unreachable_url_is_transient(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AdapterSourceError, match="cannot reach") as e:
        fetch("a", entry({"type": "url", "url": f"http://127.0.0.1:{port}/a.safetensors"}), tmp_path, MB, 2)
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
        fetch("a", e, tmp_path, MB)


def test_hub_pickle_filename_refused(tmp_path):
    e = entry({"type": "hub", "repo": "someone/some-lora", "filename": "model.ckpt"})
    with pytest.raises(AdapterSourceError, match="pickle") as err:
        fetch("a", e, tmp_path, MB)
    assert err.value.permanent


# -- issue #10: SSRF, redirects, path confinement, transient transfers, limits, no file bytes in errors ------------


def test_url_to_private_loopback_or_link_local_is_refused(lora_file, tmp_path):
    with FileServer(lora_file.parent) as srv:
        e = entry({"type": "url", "url": f"{srv.url}/style.safetensors"})
        with pytest.raises(AdapterSourceError, match="loopback") as err:
            fetch("a", e, tmp_path / "c", MB, policy=SourcePolicy())
        assert err.value.permanent
        assert fetch("a", e, tmp_path / "c", MB).read_bytes() == lora_file.read_bytes()  # allowed by the option


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_address_classification(address):
    from inference_pod.adapters.sources import address_refusal

    assert address_refusal(address, allow_private=False)
    assert address_refusal("8.8.8.8", allow_private=False) is None  # classification only: nothing is dialled


def test_redirect_to_another_scheme_is_not_followed(lora_file, tmp_path):
    from tests.helpers.trickle_server import TrickleServer

    with TrickleServer(lora_file.read_bytes()) as srv:
        target = srv.url.replace("http://", "https://") + "/style.safetensors"
        e = entry({"type": "url", "url": f"{srv.url}/redirect?to={target}"})
        with pytest.raises(AdapterSourceError, match="another scheme") as err:
            fetch("a", e, tmp_path / "c", MB)
        assert err.value.permanent
        # A same-scheme redirect to an allowed target is followed.
        e = entry({"type": "url", "url": f"{srv.url}/redirect?to={srv.url}/whole.safetensors"})
        assert fetch("b", e, tmp_path / "c", MB).read_bytes() == lora_file.read_bytes()


def test_short_download_is_transient_and_leaves_nothing(lora_file, tmp_path):
    from tests.helpers.trickle_server import TrickleServer

    once = replace(OPEN, fetch_attempts=1)  # no retry within the fetch: the caller's retry later
    with TrickleServer(lora_file.read_bytes(), short_count=1) as srv:
        e = entry({"type": "url", "url": f"{srv.url}/short/style.safetensors"})
        with pytest.raises(AdapterSourceError) as err:
            fetch("a", e, tmp_path / "c", MB, policy=once)
        assert not err.value.permanent, err.value
        assert list((tmp_path / "c").glob("*")) == []
        assert fetch("a", e, tmp_path / "c", MB, policy=once).read_bytes() == lora_file.read_bytes()  # the retry works


@pytest.mark.parametrize("mode", ["503", "reset", "short"])
def test_transient_failures_are_retried_within_the_fetch(lora_file, tmp_path, mode):
    """Before: one 503, reset or short body failed the fetch (the request got a 502)."""
    from tests.helpers.trickle_server import FlakyServer

    with FlakyServer(lora_file.read_bytes()) as srv:
        for k in (1, 2):  # fails k times, then serves: within the 3 attempts
            path = f"/{mode}/{k}/style.safetensors"
            got = fetch(f"a{k}", entry({"type": "url", "url": srv.url + path}), tmp_path / "c", MB)
            assert got.read_bytes() == lora_file.read_bytes()
            assert srv.gets[path] == k + 1


def test_a_source_failing_every_attempt_is_transient_and_bounded(lora_file, tmp_path):
    from tests.helpers.trickle_server import SECRET, FlakyServer

    with FlakyServer(lora_file.read_bytes()) as srv:
        t0 = time.monotonic()
        with pytest.raises(AdapterSourceError, match=r"answered 503 \(attempt 3 of 3\)") as err:
            fetch("a", entry({"type": "url", "url": srv.url + "/503/9/s.safetensors"}), tmp_path / "c", MB)
        assert time.monotonic() - t0 < 3  # backoff 0.25 s + 0.5 s
        assert srv.gets["/503/9/s.safetensors"] == 3
        assert not err.value.permanent and SECRET.decode() not in str(err.value)
        assert list((tmp_path / "c").glob("*")) == []
        # No retry would start after the window (the worker's request deadline): one attempt only.
        late = replace(OPEN, retry_within_s=0.1)
        with pytest.raises(AdapterSourceError, match="answered 503$"):
            fetch("b", entry({"type": "url", "url": srv.url + "/503/9/t.safetensors"}), tmp_path / "c", MB, policy=late)
        assert srv.gets["/503/9/t.safetensors"] == 1


def test_what_is_not_transient_is_not_retried(lora_file, tmp_path):
    """A 4xx, a hash mismatch, the size cap and a malformed answer: one GET each, and no response bytes echoed."""
    from tests.helpers.trickle_server import SECRET, FlakyServer

    with FlakyServer(lora_file.read_bytes()) as srv:
        cases = [
            ("/404/1/a.safetensors", {}, MB, "answered 404", True),
            ("/503/0/b.safetensors", {"sha256": "0" * 64}, MB, "sha256 mismatch", True),
            ("/503/0/c.safetensors", {}, 100, "over the limit", True),
            ("/garbage/1/d.safetensors", {}, MB, "malformed HTTP answer", False),
        ]
        for path, extra, limit, words, permanent in cases:
            with pytest.raises(AdapterSourceError, match=words) as err:
                fetch(path, entry({"type": "url", "url": srv.url + path, **extra}), tmp_path / "c", limit)
            assert srv.gets[path] == 1, path
            assert err.value.permanent is permanent, path
            assert SECRET.decode() not in str(err.value)


def test_slow_and_silent_sources_are_cut_off(lora_file, tmp_path):
    from tests.helpers.trickle_server import TrickleServer

    policy = SourcePolicy(allow_private=True, min_bytes_per_s=1000, min_rate_grace_s=0.5, first_byte_timeout_s=1.0)
    with TrickleServer(lora_file.read_bytes(), delay=0.2, piece=8) as srv:
        for path, words in (("/slow/s.safetensors", "too slow"), ("/silent/s.safetensors", "timed out")):
            t0 = time.monotonic()
            with pytest.raises(AdapterSourceError, match=words) as err:
                fetch("a", entry({"type": "url", "url": srv.url + path}), tmp_path / "c", MB, policy=policy)
            assert not err.value.permanent
            assert time.monotonic() - t0 < 5
        tight = SourcePolicy(allow_private=True, total_timeout_s=0.5, min_bytes_per_s=0)
        with pytest.raises(AdapterSourceError, match="not complete within"):
            fetch("a", entry({"type": "url", "url": srv.url + "/slow/t.safetensors"}), tmp_path / "c", MB, policy=tight)


def test_path_sources_are_confined_to_the_roots(lora_file, tmp_path):
    root = lora_file.parent
    policy = SourcePolicy(path_roots=(root,))
    assert fetch("a", entry({"type": "path", "path": str(lora_file)}), tmp_path / "c", MB, policy=policy) == lora_file
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(lora_file.read_bytes())
    (root / "link.safetensors").symlink_to(outside)
    for raw in (str(outside), str(root / "link.safetensors"), str(root / ".." / "outside.safetensors")):
        with pytest.raises(AdapterSourceError, match="outside the allowed adapter roots") as err:
            fetch("a", entry({"type": "path", "path": raw}), tmp_path / "c", MB, policy=policy)
        assert err.value.permanent
    with pytest.raises(AdapterSourceError, match="absolute"):
        fetch("a", entry({"type": "path", "path": "src/style.safetensors"}), tmp_path / "c", MB, policy=policy)
    with pytest.raises(AdapterSourceError, match="not allowed"):
        fetch("a", entry({"type": "path", "path": str(lora_file)}), tmp_path / "c", MB, policy=SourcePolicy())


def test_errors_never_echo_file_bytes(tmp_path):
    secret = b"SECRETS!"  # the first 8 bytes of, say, a private key file
    f = tmp_path / "x.safetensors"
    f.write_bytes(secret + b"rest of the file")
    with pytest.raises(AdapterSourceError) as err:
        fetch("a", entry({"type": "path", "path": str(f)}), tmp_path / "c", MB)
    message = str(err.value)
    assert str(int.from_bytes(secret, "little")) not in message and "SECRETS" not in message
    bad_json = tmp_path / "y.safetensors"
    bad_json.write_bytes((12).to_bytes(8, "little") + b"\xff\xfeSECRETKEY!")
    with pytest.raises(AdapterSourceError) as err:
        fetch("a", entry({"type": "path", "path": str(bad_json)}), tmp_path / "c", MB)
    assert "SECRET" not in str(err.value) and "0xff" not in str(err.value)
