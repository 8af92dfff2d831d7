"""A misbehaving HTTP server on loopback (raw sockets in threads) for adapter URL sources.

Paths: /slow/<name> sends headers, then the file one small piece every `delay` seconds; /short/<name> announces the
full Content-Length and closes after a few bytes (`short_count` times, then serves the file whole); /silent never
answers; /redirect?to=<url> answers 302 to that URL; anything else serves the file whole.

`FlakyServer`: /<mode>/<k>/<anything> fails its first k GETs (counted per path) in one way, then serves the file:
503 or 404 (with a body holding `SECRET`), `reset` (half the body, then a TCP reset), `short` (a few bytes, then a
clean close), `garbage` (a status line that is not HTTP and holds `SECRET`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from typing import Self

SECRET = b"s3cr3t-response-bytes"  # never to be echoed in an error message


class RawHttpServer:
    """A thread-per-connection socket server on 127.0.0.1; subclasses answer in `_serve(conn)`."""

    def __init__(self, backlog: int = 32) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class TrickleServer(RawHttpServer):
    def __init__(self, payload: bytes, delay: float = 0.2, piece: int = 16, short_count: int = 1) -> None:
        super().__init__()
        self.payload = payload
        self.delay = delay
        self.piece = piece
        self.short_left = short_count
        self.requests: list[str] = []

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            target = data.split(b" ", 2)[1].decode()
            self.requests.append(target)
            path = urllib.parse.urlsplit(target).path
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.payload)}\r\nConnection: close\r\n\r\n".encode()
            if path.startswith("/silent"):
                self._stop.wait(60)
            elif path.startswith("/redirect"):
                to = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)["to"][0]
                conn.sendall(f"HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n".encode())
            elif path.startswith("/slow"):
                conn.sendall(head)
                for i in range(0, len(self.payload), self.piece):
                    if self._stop.is_set():
                        return
                    conn.sendall(self.payload[i : i + self.piece])
                    time.sleep(self.delay)
            elif path.startswith("/short") and self.short_left > 0:
                self.short_left -= 1
                conn.sendall(head + self.payload[:10])
            else:
                conn.sendall(head + self.payload)


class FlakyServer(RawHttpServer):
    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload
        self.gets: Counter[str] = Counter()  # GETs per path
        self._lock = threading.Lock()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            path = urllib.parse.urlsplit(data.split(b" ", 2)[1].decode()).path
            mode, k = path.strip("/").split("/")[:2]
            with self._lock:
                self.gets[path] += 1
                n = self.gets[path]
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.payload)}\r\nConnection: close\r\n\r\n".encode()
            if n > int(k):
                conn.sendall(head + self.payload)
            elif mode in ("503", "404"):
                reason = b"x " + SECRET
                conn.sendall(
                    f"HTTP/1.1 {mode} Nope\r\nContent-Length: {len(reason)}\r\nConnection: close\r\n\r\n".encode()
                    + reason
                )
            elif mode == "reset":  # RST, not FIN: the reader sees ECONNRESET mid-body
                conn.sendall(head + self.payload[: len(self.payload) // 2])
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif mode == "short":
                conn.sendall(head + self.payload[:10])
            elif mode == "garbage":
                conn.sendall(b"NOT-HTTP " + SECRET + b"\r\n\r\n")
            else:
                raise ValueError(f"unknown mode {mode}")
