"""The hop signature: what it covers, the replay window, key files and directories, rotation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loraplex.api.hopauth import HopAuthError, HopKeys, write_random_key_file

K1, K2 = "k1-" + "a" * 40, "k2-" + "b" * 40


def sign(keys: HopKeys, **kw) -> str:
    args = {"method": "POST", "path_qs": "/v1/generate", "hop": "pod-0", "route": '{"pool":"p"}', "body": b"{}"}
    return keys.sign(**{**args, **kw})


def verify(keys: HopKeys, value: str, **kw) -> None:
    args = {"method": "POST", "path_qs": "/v1/generate", "hop": "pod-0", "route": '{"pool":"p"}', "body": b"{}"}
    keys.verify(value, **{**args, **kw})


def test_signature_covers_method_path_hop_route_and_body(tmp_path: Path) -> None:
    keys = HopKeys(write_random_key_file(tmp_path / "key"))
    good = sign(keys)
    verify(keys, good)
    for change in (
        {"method": "GET"},
        {"path_qs": "/v1/images/generations"},
        {"hop": "pod-1"},
        {"route": '{"pool":"q"}'},
        {"body": b"{ }"},
    ):
        with pytest.raises(HopAuthError, match="bad"):
            verify(keys, good, **change)
    for bad in ("", "v1", "v2 ts=1 sig=00", "v1 ts=x sig=00", "v1 sig=00", "garbage=="):
        with pytest.raises(HopAuthError):
            verify(keys, bad)


def test_replay_window(tmp_path: Path) -> None:
    keys = HopKeys(write_random_key_file(tmp_path / "key"))
    old = keys.sign("POST", "/", "h", "", b"", now=time.time() - 120)
    with pytest.raises(HopAuthError, match="window"):
        keys.verify(old, "POST", "/", "h", "", b"")
    keys.verify(old, "POST", "/", "h", "", b"", max_skew_s=300)


def test_rotation_accepts_every_listed_key_and_signs_with_the_first(tmp_path: Path) -> None:
    (tmp_path / "old").write_text(f"# comment\n{K1}\n")
    old = HopKeys(tmp_path / "old")
    (tmp_path / "both").write_text(f"{K2}\n\n{K1}\nshort\n")
    both = HopKeys(tmp_path / "both")
    assert both.keys == (K2.encode(), K1.encode())  # the short key is ignored
    verify(both, sign(old))
    with pytest.raises(HopAuthError):
        verify(old, sign(both))


def test_directory_of_key_files_like_a_mounted_secret(tmp_path: Path) -> None:
    d = tmp_path / "secret"
    (d / "..data").mkdir(parents=True)
    (d / "..data" / "key").write_text(K1)
    (d / "key").symlink_to(d / "..data" / "key")
    (d / ".hidden").write_text(K2)
    keys = HopKeys(d, check_interval_s=0)
    assert keys.keys == (K1.encode(),)
    (d / "key2").write_text(K2)
    assert keys.keys == (K1.encode(), K2.encode())


def test_no_key_refuses_everything(tmp_path: Path) -> None:
    keys = HopKeys(tmp_path / "missing")
    assert keys.sign("POST", "/", "h", "", b"") == ""
    with pytest.raises(HopAuthError, match="no hop key"):
        keys.verify(f"v1 ts={int(time.time())} sig=00", "POST", "/", "h", "", b"")
