"""The hop signature: what it covers, the replay window and cache, key files and directories, rotation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loraplex.api.hopauth import HopAuthError, HopKeys, ReplayCache, write_random_key_file

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
    for bad in ("", "v1", "v2 ts=1 sig=00", "v2 ts=x nonce=00 sig=00", "v2 nonce=1 sig=00", "garbage=="):
        with pytest.raises(HopAuthError):
            verify(keys, bad)
    assert len(keys.replays) == 1  # only the good one was remembered


def test_a_signed_request_is_accepted_once(tmp_path: Path) -> None:
    """Before: the same signature was accepted again and again for 60 s (a captured hop could be replayed)."""
    keys = HopKeys(write_random_key_file(tmp_path / "key"))
    good = sign(keys)
    verify(keys, good)
    with pytest.raises(HopAuthError, match="replayed .* accepted only once"):
        verify(keys, good)
    # Two identical requests in the same second are two signatures (random nonces): both served.
    a, b = sign(keys, now=1_000_000), sign(keys, now=1_000_000)
    assert a != b
    verify(keys, a, now=1_000_000)
    verify(keys, b, now=1_000_000)
    # The nonce is signed: changing it breaks the signature.
    c = sign(keys)
    nonce = c.split("nonce=")[1].split()[0]
    with pytest.raises(HopAuthError, match="bad"):
        verify(keys, c.replace(nonce, "0" * len(nonce)))


def test_v1_without_a_nonce_is_refused(tmp_path: Path) -> None:
    keys = HopKeys(write_random_key_file(tmp_path / "key"))
    with pytest.raises(HopAuthError, match="v1 .*no longer accepted"):
        verify(keys, f"v1 ts={int(time.time())} sig=" + "0" * 64)


def test_replay_cache_is_bounded_and_never_lets_a_replay_through() -> None:
    cache = ReplayCache(max_entries=3)
    for i, ts in enumerate((100, 101, 102, 103)):
        cache.admit(f"s{i}", ts, now=103, window_s=60)
    assert len(cache) == 3 and cache.floor == 100  # s0 forgotten for room
    with pytest.raises(HopAuthError, match="replayed"):
        cache.admit("s3", 103, now=103, window_s=60)
    with pytest.raises(HopAuthError, match="too old for the replay cache"):
        cache.admit("s0", 100, now=103, window_s=60)  # forgotten, yet refused: not newer than the floor
    cache.admit("s4", 104, now=104, window_s=60)
    # Entries leave with the window (the time check refuses them from then on).
    cache.admit("s5", 200, now=200, window_s=60)
    assert len(cache) == 1


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
        keys.verify(f"v2 ts={int(time.time())} nonce=00 sig=00", "POST", "/", "h", "", b"")


def test_flag_is_bound_to_its_hop_and_key(tmp_path: Path) -> None:
    keys = HopKeys(write_random_key_file(tmp_path / "key"))
    other = HopKeys(write_random_key_file(tmp_path / "other"))
    hop_auth = sign(keys)
    flag = keys.sign_flag("X-Loraplex-If-Idle", hop_auth)
    assert flag.startswith("v1 sig=") and keys.verify_flag(flag, "X-Loraplex-If-Idle", hop_auth)
    assert not keys.verify_flag(flag, "X-Loraplex-Other", hop_auth)  # another flag
    assert not keys.verify_flag(flag, "X-Loraplex-If-Idle", sign(keys, body=b"[]"))  # another hop
    assert not other.verify_flag(flag, "X-Loraplex-If-Idle", hop_auth)  # another key
    for bad in ("", "1", "v1 sig=", "v1 sig=00", None):
        assert not keys.verify_flag(bad, "X-Loraplex-If-Idle", hop_auth)
    assert not keys.verify_flag(flag, "X-Loraplex-If-Idle", None)
    assert keys.sign_flag("X-Loraplex-If-Idle", "") == ""
