"""HTTP/1.1 over a bare socket, for bodies no ordinary client would send.

Lets a test write a request body in exact pieces (with pauses, so the server reads them
separately), declare a Content-Length that matches a cut-off body, stop half way through a
chunked body, and see whether the server has answered before the body is complete.
Responses are read by their framing (Content-Length or chunked), never by waiting for close.

Given the URL of an in-process app (tests.support.inprocess.AppServer), the same calls drive
that app through ASGI instead (AsgiConnection): each piece sent is one `http.request` message,
a close before the body ends is a client disconnect. Bytes no HTTP parser would accept need a
real server (tests/system/).
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Connection:
    """One request on one socket: `start()`, `send()` pieces, then `response()`."""

    base_url: str
    sock: socket.socket = field(init=False)
    buffer: bytearray = field(default_factory=bytearray)
    chunked: bool = False
    sent_body: int = 0

    def __new__(cls, base_url: str, *_args: Any, **_kwargs: Any) -> Any:
        from tests.support.inprocess import RUNNING, AsgiConnection

        server = RUNNING.get(base_url)
        if server is not None:
            return AsgiConnection(server)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = parts.netloc

    def start(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        content_length: int | None = None,
        chunked: bool = False,
    ) -> None:
        self.chunked = chunked
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if content_length is not None:
            lines.append(f"Content-Length: {content_length}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send(self, piece: bytes) -> None:
        """One piece of the body (one chunk when chunked; empty pieces are skipped)."""
        if not piece:
            return
        if self.chunked:
            self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            self.sock.sendall(piece)
        self.sent_body += len(piece)

    def finish_chunked(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")

    def answered(self, wait: float = 0.0) -> bool:
        """Whether the server has started to answer (readable socket) within `wait` seconds."""
        if self.buffer:
            return True
        readable, _, _ = select.select([self.sock], [], [], wait)
        return bool(readable)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete response in time")
        self.sock.settimeout(remaining)
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("connection closed before the response was complete")
        self.buffer += data

    def _take(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out

    def _line(self, deadline: float) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill(deadline)
        index = self.buffer.index(b"\r\n")
        return self._take(index + 2, deadline)[:-2]

    def response(self, *, head: bool = False, timeout: float = 30) -> RawResponse:
        deadline = time.monotonic() + timeout
        status_line = self._line(deadline).decode("latin-1")
        status = int(status_line.split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        while line := self._line(deadline):
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        response = RawResponse(status, headers)
        if head or status in (204, 304) or 100 <= status < 200:
            return response
        length = response.header("content-length")
        if length is not None:
            response.body = self._take(int(length), deadline)
        elif (response.header("transfer-encoding") or "").lower() == "chunked":
            body = bytearray()
            while size := int(self._line(deadline).split(b";")[0], 16):
                body += self._take(size, deadline)
                self._take(2, deadline)
            while self._line(deadline):
                pass
            response.body = bytes(body)
        return response

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def request(
    base_url: str,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    pieces: Iterable[bytes] = (),
    *,
    content_length: int | None = None,
    chunked: bool = False,
    pause: float = 0.0,
    timeout: float = 30,
) -> RawResponse:
    """Send the body in `pieces` (pausing between them so each reaches the server on its own)
    and read the answer. Without `content_length` or `chunked`, Content-Length is the pieces'
    total; give a `content_length` that matches a cut-off body to make it look complete."""
    body = list(pieces)
    if content_length is None and not chunked:
        content_length = sum(len(p) for p in body)
    with Connection(base_url) as conn:
        conn.start(method, target, headers, content_length=content_length, chunked=chunked)
        for i, piece in enumerate(body):
            if i and pause:
                time.sleep(pause)
            conn.send(piece)
        if chunked:
            conn.finish_chunked()
        return conn.response(head=method == "HEAD", timeout=timeout)
