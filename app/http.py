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
from litestar import Litestar, Request
from litestar.types import Receive, ReceiveMessage, Scope, Send

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


class ServerStopping(Exception):
    """The server is shutting down and its grace period is over: the rest of a request body
    still arriving is not waited for."""


class Stopping:
    """The server's shutdown as its requests see it; the server drives it (app/shutdown.py).

    `begin()`: shutdown has started. Endless streams (StreamAnswer(endless=True): the event
    feed) end now, cleanly; every other request may still finish. `expire()`: the grace period
    is over. A request waiting for more of its body gets ServerStopping where it waits (503,
    nothing stored), as does one that asks for more afterwards. Under a server that calls
    neither, nothing here changes anything."""

    def __init__(self) -> None:
        self.begun = asyncio.Event()
        self.expired = False
        self._waiting: set[asyncio.Task[Any]] = set()  # each in `await receive()` of a body
        self._ending: set[asyncio.Task[Any]] = set()  # cancelled by expire(), not yet told

    def begin(self) -> None:
        self.begun.set()

    def expire(self) -> None:
        self.begin()
        self.expired = True
        for task in list(self._waiting):
            self._ending.add(task)
            task.cancel()

    async def receive(self, receive: Receive) -> ReceiveMessage:
        """`receive()`, or ServerStopping once the grace period is over. Waiting is cancelled
        by expire(), the only cancellation turned into ServerStopping: a timeout's or the
        server's own propagates as it is."""
        task = asyncio.current_task()
        if self.expired:
            raise ServerStopping
        if task is None:
            return await receive()
        self._waiting.add(task)
        try:
            return await receive()
        except asyncio.CancelledError:
            if task not in self._ending:
                raise
            self._ending.discard(task)
            task.uncancel()
            raise ServerStopping from None
        finally:
            self._waiting.discard(task)


def stopping_of(app: Litestar) -> Stopping:
    """The app's Stopping, made on first use (by a request or by the server)."""
    stopping = app.state.get("stopping")
    if stopping is None:
        stopping = app.state["stopping"] = Stopping()
    return stopping


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
    aborts the connection and the client never mistakes a cut body for a whole one.

    `endless`: a stream with no end of its own (the event feed, no Content-Length), which
    therefore ends, cleanly, as soon as the server's shutdown begins (Stopping): a server
    would otherwise wait for it until its grace period ran out, and its reader reconnects
    anyway. A stream of known length is left to finish within the grace period."""

    __slots__ = ("chunks", "endless", "headers", "status")

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        status: int = 200,
        headers: Iterable[tuple[str, str]] | dict[str, str] | None = None,
        *,
        endless: bool = False,
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.endless = endless
        pairs = headers.items() if isinstance(headers, dict) else (headers or ())
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in pairs]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = scope.get("asgi", {}).get("spec_version", "2.0")
        reports_gone = tuple(int(p) for p in spec.split(".")) >= (2, 4)  # send raises OSError
        stopping = stopping_of(scope["litestar_app"]) if self.endless else None
        try:
            await self._start(send)
            if reports_gone and stopping is None:
                await self._send_body(send)
            else:
                await self._send_watching(send, None if reports_gone else receive, stopping)
        except OSError:
            return  # the client went away
        finally:
            aclose = getattr(self.chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _start(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})

    async def _send_body(self, send: Send) -> None:
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_watching(
        self, send: Send, receive: Receive | None, stopping: Stopping | None
    ) -> None:
        """The body, until it ends, the client goes away (watched on `receive`, if given), or
        the server's shutdown begins (`stopping`, if given: then the body ends cleanly)."""
        gone = False
        try:
            async with asyncio.TaskGroup() as group:
                sending = group.create_task(self._send_body(send))
                watches: list[asyncio.Task[Any]] = []
                if receive is not None:
                    watches.append(group.create_task(_until_disconnect(receive)))
                shutdown = group.create_task(stopping.begun.wait()) if stopping else None
                if shutdown is not None:
                    watches.append(shutdown)
                for watch in watches:
                    watch.add_done_callback(lambda _: sending.cancel())
                sending.add_done_callback(lambda _: [watch.cancel() for watch in watches])
        except* OSError:
            gone = True  # the client went away (ASGI 2.4)
        if not gone and sending.cancelled() and shutdown and not shutdown.cancelled():
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
    enforces its own limit) and no copy; ClientGone when the client disconnects first,
    ServerStopping when the server's shutdown grace period ends first."""
    receive = request.receive
    stopping = stopping_of(request.app)
    while True:
        message = await stopping.receive(receive)
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
