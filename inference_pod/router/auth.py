"""Bearer-token auth for the public API: tokens from a file (a mounted Secret), one per line."""

from __future__ import annotations

import hmac
import logging
import os
import time

log = logging.getLogger("loraplex.auth")


class TokenFile:
    """Bearer tokens, one per line, re-read when the file changes (a mounted Secret updates in place)."""

    def __init__(self, path: str, check_interval_s: float = 1.0) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self._sig: tuple[int, int] | None = None
        self._tokens: tuple[bytes, ...] = ()
        self._checked = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            sig = (st.st_mtime_ns, st.st_size)
            if sig == self._sig:
                return
            with open(self.path, encoding="utf-8") as f:
                tokens = tuple(line.strip().encode() for line in f if line.strip() and not line.startswith("#"))
        except OSError as e:
            log.error("cannot read auth tokens file %s: %s (denying all requests)", self.path, e)
            self._sig, self._tokens = None, ()
            return
        if not tokens:
            log.warning("auth tokens file %s holds no token: every request will be refused", self.path)
        self._sig, self._tokens = sig, tokens

    def allows(self, authorization: str | None) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.check_interval_s:
            self._checked = now
            self._reload()
        if not authorization or not authorization.startswith("Bearer "):
            return False
        given = authorization[len("Bearer ") :].strip().encode()
        # Compare against every token in constant time: no early exit leaks which one matched.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given, token)
        return ok
