"""Authenticating the internal hops: sidecar -> peer sidecar, and sidecar -> its own worker.

The internal headers (`X-Loraplex-Hop`, `X-Loraplex-Route`) decide where a request is served and where the worker
fetches adapter bytes from, so a hop carries an HMAC-SHA256 over everything that matters:

    v2 \\n <unix seconds> \\n <nonce> \\n <METHOD> \\n <path and query> \\n <hop> \\n <route> \\n <sha256(body) hex>

sent as `X-Loraplex-Hop-Auth: v2 ts=<unix seconds> nonce=<32 hex> sig=<hex>`. A signature is accepted within
`max_skew_s` of the receiver's clock, under any key of the key file, and once: each receiver remembers the
signatures it accepted until they leave the window (`ReplayCache`), so a captured hop replayed to it is refused
(401) while two identical requests in the same second still differ by their random nonces. The cache is bounded:
when it is full of live entries it forgets the oldest and refuses any signature not newer than the oldest it forgot
(never a replay accepted, only old hops refused under extreme load). v1 (no nonce) is refused. A hop is signed
with the key file's first key (rotation: add the new key second, roll out, move it first, roll out, drop the old).

A flag that changes how a hop is served (`X-Loraplex-If-Idle`) is bound to the hop's signature by an HMAC of its
own, `v1 sig=<hex>` over `flag \n <name> \n <the X-Loraplex-Hop-Auth value>` (`sign_flag` / `verify_flag`): it
cannot be added to someone else's signed hop, and a router that predates the flag still verifies the hop as before
(it ignores the header).

The key file is a mounted Secret: either a file with one key per line (`#` comments and blank lines skipped) or a
directory whose regular, non-hidden files each hold keys the same way (read in name order). Keys shorter than 16
bytes are ignored. The file is re-read when it changes.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from loraplex.api import headers as hdr

log = logging.getLogger("loraplex.hopauth")

MIN_KEY_BYTES = 16
DEFAULT_MAX_SKEW_S = 60.0
DEFAULT_REPLAY_CACHE_SIZE = 100_000  # accepted signatures remembered (~150 bytes each)


class HopAuthError(Exception):
    """The hop's signature is missing, malformed, stale or wrong; the message says which (never a key)."""


def _message(ts: int, nonce: str, method: str, path_qs: str, hop: str, route: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return "\n".join(("v2", str(ts), nonce, method.upper(), path_qs, hop, route, digest)).encode()


def signature(key: bytes, ts: int, nonce: str, method: str, path_qs: str, hop: str, route: str, body: bytes) -> str:
    return hmac.new(key, _message(ts, nonce, method, path_qs, hop, route, body), hashlib.sha256).hexdigest()


class ReplayCache:
    """The signatures a receiver accepted, each until its timestamp leaves the window; at most `max_entries`."""

    def __init__(self, max_entries: int = DEFAULT_REPLAY_CACHE_SIZE) -> None:
        self.max_entries = max_entries
        self._seen: set[str] = set()
        self._by_ts: list[tuple[int, str]] = []  # heap: the oldest timestamp first
        self.floor = -1  # timestamps <= floor are refused: an entry that young was forgotten for room
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, sig: str, ts: int, now: float, window_s: float) -> None:
        """Remember `sig` (already verified); raise HopAuthError if it was seen, or cannot be told apart any more."""
        with self._lock:
            while self._by_ts and self._by_ts[0][0] < now - window_s:  # out of the window: refused by time anyway
                self._seen.discard(heapq.heappop(self._by_ts)[1])
            if sig in self._seen:
                raise HopAuthError(f"replayed {hdr.HOP_AUTH} signature: a signed request is accepted only once")
            if ts <= self.floor:
                raise HopAuthError(
                    f"{hdr.HOP_AUTH} timestamp is too old for the replay cache under this load ({self.max_entries} "
                    "recent hops remembered); send a fresh request"
                )
            self._seen.add(sig)
            heapq.heappush(self._by_ts, (ts, sig))
            while len(self._by_ts) > self.max_entries:
                old_ts, old = heapq.heappop(self._by_ts)
                self._seen.discard(old)
                self.floor = max(self.floor, old_ts)


class HopKeys:
    """The pool's hop keys from a file or directory, re-read (at most every `check_interval_s`) when changed."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        check_interval_s: float = 1.0,
        replay_cache_size: int = DEFAULT_REPLAY_CACHE_SIZE,
    ) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self.replays = ReplayCache(replay_cache_size)
        self._keys: tuple[bytes, ...] = ()
        self._stamp: object = None
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._refresh(force=True)

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if not p.name.startswith(".") and p.is_file())
        return [self.path]

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < self.check_interval_s:
                return
            self._checked = now
            try:
                files = self._files()
                stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
                if stamp == self._stamp:
                    return
                keys: list[bytes] = []
                for p in files:
                    for line in p.read_text(encoding="utf-8").splitlines():
                        line = line.strip()
                        if not line or line.startswith("#"):
                            continue
                        if len(line.encode()) < MIN_KEY_BYTES:
                            log.warning("hop key file %s: a key shorter than %d bytes is ignored", p, MIN_KEY_BYTES)
                            continue
                        keys.append(line.encode())
            except (OSError, UnicodeDecodeError) as e:
                log.error("cannot read hop key file %s: %s (every hop is refused)", self.path, e)
                self._keys, self._stamp = (), None
                return
            if not keys:
                log.error("hop key file %s holds no usable key: every hop is refused", self.path)
            self._keys, self._stamp = tuple(keys), stamp

    @property
    def keys(self) -> tuple[bytes, ...]:
        self._refresh()
        return self._keys

    def sign(self, method: str, path_qs: str, hop: str, route: str, body: bytes, now: float | None = None) -> str:
        """The `X-Loraplex-Hop-Auth` value for this request, signed with the first key ('' without a key)."""
        keys = self.keys
        if not keys:
            return ""
        ts = int(time.time() if now is None else now)
        nonce = secrets.token_hex(16)
        return f"v2 ts={ts} nonce={nonce} sig={signature(keys[0], ts, nonce, method, path_qs, hop, route, body)}"

    def verify(
        self,
        value: str | None,
        method: str,
        path_qs: str,
        hop: str,
        route: str,
        body: bytes,
        *,
        max_skew_s: float = DEFAULT_MAX_SKEW_S,
        now: float | None = None,
    ) -> None:
        """Raise HopAuthError unless `value` signs this request under one of the keys, within the clock skew, and
        this receiver has not accepted the same signature before."""
        if not value:
            raise HopAuthError(f"missing {hdr.HOP_AUTH} header")
        parts = value.split()
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if parts and parts[0] == "v1":
            raise HopAuthError(f"{hdr.HOP_AUTH} v1 (no nonce, replayable) is no longer accepted: upgrade the sender")
        if not parts or parts[0] != "v2" or not {"ts", "nonce", "sig"} <= fields.keys():
            raise HopAuthError(f"malformed {hdr.HOP_AUTH} header")
        try:
            ts = int(fields["ts"])
        except ValueError:
            raise HopAuthError(f"malformed {hdr.HOP_AUTH} timestamp") from None
        current = time.time() if now is None else now
        if abs(current - ts) > max_skew_s:
            raise HopAuthError(f"{hdr.HOP_AUTH} timestamp is outside the allowed {max_skew_s:g}s window")
        keys = self.keys
        if not keys:
            raise HopAuthError("no hop key is configured here")
        given = fields["sig"].encode()
        nonce = fields["nonce"]
        ok = False
        for key in keys:  # every key, no early exit
            ok |= hmac.compare_digest(given, signature(key, ts, nonce, method, path_qs, hop, route, body).encode())
        if not ok:
            raise HopAuthError(f"bad {hdr.HOP_AUTH} signature")
        # Only a valid signature takes a cache entry: unauthenticated junk cannot fill it.
        self.replays.admit(fields["sig"], ts, current, max_skew_s)

    def sign_flag(self, flag: str, hop_auth: str) -> str:
        """The value of flag header `flag` on the hop signed `hop_auth` ('' without a key or a signature)."""
        keys = self.keys
        if not keys or not hop_auth:
            return ""
        return f"v1 sig={_flag_sig(keys[0], flag, hop_auth)}"

    def verify_flag(self, value: str | None, flag: str, hop_auth: str | None) -> bool:
        """Whether `value` is flag `flag` signed for the hop signed `hop_auth` (verify the hop itself first)."""
        if not value or not hop_auth or not value.startswith("v1 sig="):
            return False
        given = value[len("v1 sig=") :].strip().encode()
        ok = False
        for key in self.keys:  # every key, no early exit
            ok |= hmac.compare_digest(given, _flag_sig(key, flag, hop_auth).encode())
        return ok


def _flag_sig(key: bytes, flag: str, hop_auth: str) -> str:
    return hmac.new(key, f"flag\n{flag}\n{hop_auth}".encode(), hashlib.sha256).hexdigest()


def write_random_key_file(path: str | os.PathLike[str]) -> Path:
    """A fresh key file only its owner can read (the local stack's and the tests' pool key)."""
    import secrets

    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return p
