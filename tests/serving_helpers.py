"""Helpers of the serving tests: a raw HTTP/1.1 connection and a way to hold the model's forward passes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SAFETY_S = 120  # the longest any wait in these tests may take before it counts as a hang (never a target)
TIMEOUT = SAFETY_S  # for httpx, whose 5 s default a loaded 2-core machine can exceed on a healthy request


class RawConnection:
    """One HTTP/1.1 connection on a plain socket: what is sent, and when, is fully in the test's hands
    (httpx would reconnect silently, which hides a server that dropped the connection)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=SAFETY_S)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def head(self, length: int | str | None, extra: str = "", path: str = "/v1/embeddings") -> bytes:
        size = "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
        return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {KEY}\r\n{extra}{size}\r\n").encode()

    def post(self, body: bytes, extra: str = "") -> tuple[int, dict[str, str], bytes]:
        self.send(self.head(len(body), extra) + body)
        return self.response()

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.buf) < length:
            self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def closed_by_server(self) -> bool:
        """Wait for the server to close the connection: True when it did (False: it sent more data)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def close(self) -> None:
        self.sock.close()


def chunked(*parts: bytes) -> bytes:
    """A chunked transfer-encoding body of ``parts`` (with the closing empty chunk)."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"


def wait_until(condition: Callable[[], bool], what: str, limit: float = SAFETY_S) -> None:
    """Poll ``condition`` until it holds (a test's synchronization, bounded by ``limit``; never asserted on)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {limit} s for {what}")
        time.sleep(0.01)


class HeldPasses:
    """Wraps a MicroBatcher's ``embed_batch``: each forward pass is recorded and, from pass ``hold_from`` on,
    waits until :meth:`release` (bounded by SAFETY_S), so a test decides what is in flight when."""

    def __init__(self, batcher, hold_from: int = 1) -> None:
        self.real, self.hold_from = batcher.embed_batch, hold_from
        self.passes: list[int] = []
        self.started = threading.Event()
        self.released = threading.Event()
        batcher.embed_batch = self

    def __call__(self, rows):
        self.passes.append(len(rows))
        self.started.set()
        if len(self.passes) >= self.hold_from:
            self.released.wait(SAFETY_S)
        return self.real(rows)

    def release(self) -> None:
        self.released.set()
