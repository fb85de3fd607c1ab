"""The HTTP primitives every controller shares: a pre-rendered answer, JSON encoding, and the
request body read straight off the ASGI channel.

`Answer` is an ASGI app that a handler returns as it is (Litestar passes ASGI apps through): its
bytes and headers are exactly what goes out, which is what the wire contract pins and what an
idempotent replay must repeat byte for byte. Headers go out as the contract's reference server
sent them: the handler's own (lowercased), then `content-length`, then `content-type`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
from litestar import Request
from litestar.types import Receive, Scope, Send

JSON = "application/json"

_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def encode_user_json(value: Any) -> msgspec.Raw:
    """JSON the client wrote (metadata), encoded as the stdlib writes it: msgspec writes floats
    its own way (`1e16` where the contract's reference answers `1e+16`), and user values must
    come back as they went in."""
    return msgspec.Raw(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


class ClientGone(Exception):
    """The client disconnected before its request body ended."""


class Answer:
    """A complete response: status, headers and body, sent in two ASGI messages (no body for
    HEAD). Also an exception handler's return value (`to_asgi_response`)."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
        media_type: str | None = JSON,
    ) -> None:
        self.body = body
        self.status = status
        pairs = headers.items() if isinstance(headers, dict) else (headers or ())
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]
        if status >= 200 and status not in (204, 304):
            if not any(k == b"content-length" for k, _ in raw):
                raw.append((b"content-length", str(len(body)).encode()))
            if media_type is not None and not any(k == b"content-type" for k, _ in raw):
                raw.append((b"content-type", media_type.encode("latin-1")))
        self.headers = raw

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for k, v in self.headers if k == wanted), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        body = b"" if scope.get("method") == "HEAD" else self.body
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def to_asgi_response(self, *_args: Any, **_kwargs: Any) -> Answer:
        return self


class StreamAnswer:
    """A response whose body is an async iterator of bytes, sent as it is produced. A client
    that goes away ends it: at the next send where the server reports it (ASGI 2.4), else as
    soon as the disconnect arrives. An iterator that fails mid-way propagates, so the server
    aborts the connection and the client never mistakes a cut body for a whole one."""

    __slots__ = ("chunks", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
    ) -> None:
        self.chunks = chunks
        self.status = status
        pairs = headers.items() if isinstance(headers, dict) else (headers or ())
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        try:
            if tuple(int(p) for p in spec.split(".")) >= (2, 4):
                try:
                    await self._send_all(send)
                except OSError:
                    return  # the client went away
            else:
                async with asyncio.TaskGroup() as group:
                    sending = group.create_task(self._send_all(send))
                    listening = group.create_task(_until_disconnect(receive))
                    sending.add_done_callback(lambda _: listening.cancel())
                    listening.add_done_callback(lambda _: sending.cancel())
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def to_asgi_response(self, *_args: Any, **_kwargs: Any) -> StreamAnswer:
        return self


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def json_answer(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return Answer(encode(content), status, headers)


def header(request: Request, name: str) -> str | None:
    """One request header (lowercase `name`), without building Litestar's Headers object."""
    wanted = name.encode("latin-1")
    for key, value in request.scope["headers"]:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


async def receive_body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, chunk by chunk: no framework size cap (each route
    enforces its own limit) and no copy; ClientGone when the client disconnects first."""
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def stream_with_idle_timeout(request: Request, seconds: float | None) -> AsyncIterator[bytes]:
    """`receive_body`, but BodyTimeout once no byte has arrived for `seconds` (0 or None: wait
    forever), so a client trickling its body (slow loris) cannot hold a request open. Only
    waiting for the client counts, never our own work."""
    chunks = receive_body(request).__aiter__()
    while True:
        deadline = asyncio.timeout(seconds or None)
        try:
            async with deadline:
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if deadline.expired():
                raise BodyTimeout(seconds or 0) from None
            raise
        yield chunk


class BodyTimeout(Exception):
    """No byte of the request body arrived for `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds
