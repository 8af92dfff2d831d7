"""A TCP relay on loopback that records what clients send: a wire tap for replay tests.

    with RecordingRelay(("127.0.0.1", worker_port)) as tap:   # point a sidecar's --worker-url at tap.url
        ...
        method, path, headers, body = tap.requests()[0]       # every HTTP request seen, parsed

Bytes go both ways unchanged; the client-to-server bytes of each connection are kept and split into requests
(Content-Length bodies only, as aiohttp sends them).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.helpers.trickle_server import RawHttpServer


class RecordingRelay(RawHttpServer):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream
        self._streams: list[bytearray] = []
        self._lock = threading.Lock()

    def _serve(self, conn: socket.socket) -> None:
        recorded = bytearray()
        with self._lock:
            self._streams.append(recorded)
        with conn, socket.create_connection(self.upstream, timeout=30) as up:
            back = threading.Thread(target=self._pump, args=(up, conn, None), daemon=True)
            back.start()
            self._pump(conn, up, recorded)
            back.join(timeout=30)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record is not None:
                    with self._lock:
                        record.extend(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def requests(self) -> list[tuple[str, str, dict[str, str], bytes]]:
        """(method, path, headers, body) of every complete request recorded so far."""
        out = []
        with self._lock:
            streams = [bytes(s) for s in self._streams]
        for data in streams:
            while b"\r\n\r\n" in data:
                head, rest = data.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
                if len(rest) < length:
                    break
                out.append((method, path, headers, rest[:length]))
                data = rest[length:]
        return out
