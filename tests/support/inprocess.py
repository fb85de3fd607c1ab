"""The real Litestar app in this process: `start_app()` is `start_server()` without a process.

`create_app(Settings(...))` with a real database (a SQLite file or a PostgreSQL database) and a
real blob directory, its lifespan run once on an event loop of its own (an anyio blocking portal
thread, uvloop like `artifacts serve`), and `AppServer.client()` an ordinary `httpx.Client` whose
transport hands each request to that app as uvicorn would:

* the scope uvicorn builds (ASGI spec 2.3, `raw_path` without the query, `client` and `server`
  on 127.0.0.1, lowercase headers), uvicorn's `server` and `date` headers and its chunked
  framing header when the app sets no Content-Length, no body for HEAD;
* the request body in pieces of at most 64 KiB as it is produced (a generator body is pulled
  piece by piece, by a feeder thread, only when the app asks for more; `receive()` waits
  cancellably, so the app's own body idle timeout works);
* the response streamed as the app sends it (SSE, exports: `client.stream()` reads each piece
  when it is sent; closing the response is a client disconnect), an exception before the
  response starts a 500 `Internal Server Error`, after it a cut body (`RemoteProtocolError`);
* the client's read timeout.

`rawhttp.Connection` on an AppServer's URL becomes an `AsgiConnection`: a request held
half-sent, a body in exact pieces, a client that goes away mid-body. What it cannot be is a
socket: bytes no HTTP parser accepts, uvicorn's own behaviour (its log, its connection handling),
signals, a process's memory or open files: those tests are in tests/system/, on real processes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import unquote

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from app.asgi import create_app
from app.settings import Settings
from storage.db.migrate import upgrade
from tests.support.servers import free_port

log = logging.getLogger("uvicorn.error")
PIECE = 64 * 1024  # the most one ASGI `http.request` message carries
_ENV_LOCK = threading.Lock()


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings `artifacts serve` would read from this environment (os.environ included,
    as a subprocess inherits it)."""
    with _ENV_LOCK, mock.patch.dict(os.environ, env):
        return Settings()


class _End:
    pass


_END = _End()


class _Cut(Exception):
    pass


class _Gone(Exception):
    """The client closed its connection before the body ended."""


class _Exchange:
    """One request/response between the client's thread and the app's event loop.

    The request body reaches `receive()` through an asyncio queue (so a `receive()` waits
    cancellably, as on a socket): all of it at once when it is in memory, else piece by piece
    as the client produces it, either pushed (`feed`, AsgiConnection) or pulled from an
    iterator by a feeder thread one piece per `receive()` that finds nothing waiting."""

    def __init__(
        self, server: AppServer, method: str, body: bytes | Iterator[bytes] | None
    ) -> None:
        """`body`: bytes (sent in pieces of PIECE, the last with more_body False), an iterator
        (pulled when the app asks), or None (pushed through `feed`)."""
        self.server = server
        self.method = method
        assert server.loop is not None
        self.loop = server.loop
        self.started: concurrent.futures.Future[tuple[int, list[tuple[bytes, bytes]]]] = (
            concurrent.futures.Future()
        )
        self.pieces: queue.SimpleQueue[bytes | _End | _Cut] = queue.SimpleQueue()
        self.response_complete = False
        self.disconnected = False
        self.request_error: BaseException | None = None
        self.wake = threading.Event()
        self.event = asyncio.Event()
        self.inbox: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.pending: collections.deque[bytes] = collections.deque()
        self.body_done = False
        self.requested = False
        self.finished = False  # the app has returned
        self.want: threading.Semaphore | None = None
        if isinstance(body, bytes):
            self.pending.extend(body[i : i + PIECE] for i in range(0, len(body), PIECE))
            self.body_done = True  # the last piece goes with more_body False
            if not self.pending:
                self.pending.append(b"")
        elif body is not None:
            self.want = threading.Semaphore(0)
            threading.Thread(target=self._feeder, args=(body,), daemon=True).start()

    def feed(self, item: bytes | BaseException | None) -> None:
        """From any thread: a piece of the body, None at its end, an exception if the client
        failed or went away."""
        with contextlib.suppress(RuntimeError):  # the loop has already stopped
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, item)

    def _feeder(self, body: Iterator[bytes]) -> None:
        assert self.want is not None
        while True:
            self.want.acquire()
            if self.finished or self.disconnected:
                return
            try:
                piece = next((p for p in body if p), None)
            except BaseException as exc:  # the client failed while sending: it is gone
                self.feed(exc)
                return
            self.feed(piece)
            if piece is None:
                return

    # -- on the app's loop -----------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not (self.disconnected or self.response_complete):
            if self.pending:
                piece = self.pending.popleft()
                more = bool(self.pending) or not self.body_done
                return {"type": "http.request", "body": piece, "more_body": more}
            if not self.body_done:
                if self.want is not None and self.inbox.empty() and not self.requested:
                    self.requested = True
                    self.want.release()
                item = await self.inbox.get()
                self.requested = False
                if isinstance(item, BaseException):
                    if not isinstance(item, _Gone):
                        self.request_error = item
                    self.disconnected = True
                    self.wake.set()
                    return {"type": "http.disconnect"}
                if item is None:
                    self.body_done = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                self.pending.extend(item[i : i + PIECE] for i in range(0, len(item), PIECE))
                return {"type": "http.request", "body": self.pending.popleft(), "more_body": True}
        while not (self.disconnected or self.response_complete):
            self.event.clear()
            await self.event.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.disconnected:
            return
        if message["type"] == "http.response.start":
            if self.started.done():
                raise RuntimeError("http.response.start sent twice")
            headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            names = {k for k, _ in headers}
            default = [(b"server", b"uvicorn")] if b"server" not in names else []
            default.append((b"date", formatdate(usegmt=True).encode()))
            headers = default + headers
            status = int(message["status"])
            if (
                b"content-length" not in names
                and b"transfer-encoding" not in names
                and self.method != "HEAD"
                and status not in (204, 304)
            ):
                headers.append((b"transfer-encoding", b"chunked"))
            self.started.set_result((status, headers))
            self.wake.set()
            return
        if message["type"] != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
        if not self.started.done():
            raise RuntimeError("http.response.body before http.response.start")
        if self.response_complete:
            raise RuntimeError("http.response.body after the response completed")
        body = bytes(message.get("body", b""))
        if body and self.method != "HEAD":
            self.pieces.put(body)
        if not message.get("more_body", False):
            self.response_complete = True
            self.pieces.put(_END)
            self.event.set()

    async def run(self, scope: dict[str, Any]) -> None:
        try:
            await self.server.app(scope, self.receive, self.send)  # type: ignore[arg-type]
        except asyncio.CancelledError:  # stop() ending a request still open, as at shutdown
            if self.started.done() and not self.response_complete:
                self.pieces.put(_Cut())
            raise
        except Exception as exc:
            log.error("Exception in ASGI application", exc_info=exc)
            self.server.errors.append(exc)
            if not self.started.done():
                await self._send_500()
            elif not self.response_complete:
                self.pieces.put(_Cut())
        else:
            if not self.started.done() and not self.disconnected:
                await self._send_500()
            elif not self.response_complete:
                self.pieces.put(_Cut())
        finally:
            self.wake.set()
            self.finished = True
            if self.want is not None:
                self.want.release()  # the feeder thread ends

    async def _send_500(self) -> None:
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"21"),
                    (b"connection", b"close"),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    # -- in the client's thread ------------------------------------------------------------

    def start(self, scope: dict[str, Any]) -> None:
        portal = self.server.portal
        if portal is None:
            raise ConnectionRefusedError("the in-process server is stopped")
        self.done = portal.start_task_soon(self.run, scope)
        self.server.tasks.add(self.done)
        self.done.add_done_callback(self.server.tasks.discard)

    def wait_started(self, timeout: float | None, timeout_error: type[Exception]) -> None:
        """Until the response starts; raises what the client's side raised while sending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.request_error is not None:
                raise self.request_error
            if self.started.done():
                return
            if self.done.done():
                self.done.result()  # the loop itself failed
                raise httpx.RemoteProtocolError("server disconnected without sending a response")
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                self.disconnect()
                raise timeout_error("no response in time")
            self.wake.wait(0.05 if wait is None else min(wait, 0.05))
            self.wake.clear()

    def disconnect(self) -> None:
        """The client went away (from its thread)."""
        if self.response_complete or self.disconnected:
            return

        def gone() -> None:
            self.disconnected = True
            self.event.set()
            self.inbox.put_nowait(_Gone())

        with contextlib.suppress(RuntimeError):  # the loop has already stopped
            self.loop.call_soon_threadsafe(gone)


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, exchange: _Exchange, read_timeout: float | None) -> None:
        self.exchange = exchange
        self.read_timeout = read_timeout

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                piece = self.exchange.pieces.get(timeout=self.read_timeout)
            except queue.Empty:
                raise httpx.ReadTimeout("in-process read timed out") from None
            if isinstance(piece, _End):
                return
            if isinstance(piece, _Cut):
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                )
            yield piece

    def close(self) -> None:
        self.exchange.disconnect()


class InProcessTransport(httpx.BaseTransport):
    def __init__(self, server: AppServer) -> None:
        self.server = server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        server = self.server
        if server.portal is None:
            raise httpx.ConnectError("the in-process server is stopped")
        scope = server.scope(request.method, request.url.raw_path, request.headers.raw)
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        stream = request.stream
        body = b"".join(stream) if isinstance(stream, httpx.ByteStream) else iter(stream)  # type: ignore[arg-type,arg-type]
        exchange = _Exchange(server, request.method, body)
        exchange.start(scope)
        exchange.wait_started(read_timeout, httpx.ReadTimeout)
        status, headers = exchange.started.result()
        return httpx.Response(
            status,
            headers=headers,
            stream=_ResponseStream(exchange, read_timeout),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )


class AsgiConnection:
    """tests.support.rawhttp.Connection's calls on an AppServer: the request line and headers
    as given, the body in exactly the pieces sent (each one `http.request` message), a close
    before the body ends a client disconnect. What only a socket has (uvicorn's parsing of the
    bytes, framing errors) is not here."""

    def __init__(self, server: AppServer) -> None:
        self.server = server
        self.host = server.url.removeprefix("http://")
        self.sent_body = 0
        self.chunked = False
        self.content_length: int | None = None
        self._exchange: _Exchange | None = None
        self._ended = False

    def start(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        *,
        content_length: int | None = None,
        chunked: bool = False,
    ) -> None:
        self.chunked, self.content_length = chunked, content_length
        raw = [(b"host", self.host.encode())]
        raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if content_length is not None:
            raw.append((b"content-length", str(content_length).encode()))
        if chunked:
            raw.append((b"transfer-encoding", b"chunked"))
        body: bytes | None = None
        if not chunked and not content_length:
            body, self._ended = b"", True
        self._exchange = _Exchange(self.server, method, body)
        self._exchange.start(self.server.scope(method, target.encode("latin-1"), raw))

    def send(self, piece: bytes) -> None:
        """One piece of the body: one `http.request` message (empty pieces are skipped)."""
        assert self._exchange is not None
        if not piece or self._ended:
            return
        if self.content_length is not None and not self.chunked:
            piece = piece[: self.content_length - self.sent_body]
        self._exchange.feed(piece)
        self.sent_body += len(piece)
        if self.content_length is not None and self.sent_body >= self.content_length:
            self._end()

    def finish_chunked(self) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended and self._exchange is not None:
            self._ended = True
            self._exchange.feed(None)

    def answered(self, wait: float = 0.0) -> bool:
        assert self._exchange is not None
        try:
            self._exchange.started.result(wait)
        except concurrent.futures.TimeoutError:
            return False
        return True

    def response(self, *, head: bool = False, timeout: float = 30) -> Any:
        from tests.support.rawhttp import RawResponse

        exchange = self._exchange
        assert exchange is not None
        deadline = time.monotonic() + timeout
        exchange.wait_started(timeout, TimeoutError)
        status, headers = exchange.started.result()
        body = bytearray()
        while True:
            try:
                piece = exchange.pieces.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("no complete response in time") from None
            if isinstance(piece, _End):
                break
            if isinstance(piece, _Cut):
                raise ConnectionError("connection closed before the response was complete")
            body += piece
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        return RawResponse(status, pairs, b"" if head else bytes(body))

    def close(self) -> None:
        if self._exchange is not None:
            self._exchange.disconnect()

    def __enter__(self) -> AsgiConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


# The in-process servers running, by URL: rawhttp's calls on one of these go through ASGI.
RUNNING: dict[str, AppServer] = {}


class AppServer:
    """The app of `create_app(settings)` with its lifespan running: `url`, `data_dir`, `log`,
    `client()` and `stop()` like tests.support.servers.Server (no `process`)."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = settings.data_dir
        self.app = create_app(settings)
        self.state: dict[str, Any] = {}
        self.errors: list[BaseException] = []  # what escaped the app (uvicorn logs them)
        self.tasks: set[concurrent.futures.Future[None]] = set()  # requests being served
        # What the process's stderr would hold: every log record at the configured level or
        # above while the app runs (records of other apps running at the same time included).
        self.log = self.data_dir / f"server-{port}.log"
        self._log_handler = logging.FileHandler(self.log)
        self._log_handler.setLevel(logging.getLevelName(settings.log_level.upper()))
        self._log_handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logging.getLogger().addHandler(self._log_handler)
        self._client_port = 40000
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self.portal: BlockingPortal | None = self._stack.enter_context(
            start_blocking_portal("asyncio", {"use_uvloop": True})
        )
        self._shutdown: asyncio.Event | None = None
        self._startup: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.loop: asyncio.AbstractEventLoop | None = None
        try:
            self.loop = self.portal.call(_running_loop)
            self._lifespan = self.portal.start_task_soon(self._run_lifespan)
            self._startup.result(60)
            RUNNING[self.url] = self
        except BaseException:
            self._stack.close()
            self.portal = None
            self._close_log()
            raise

    def _close_log(self) -> None:
        logging.getLogger().removeHandler(self._log_handler)
        self._log_handler.close()

    def scope(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> dict:
        """The HTTP scope uvicorn builds for `method target` with these headers."""
        raw_path, _, query = target.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", self.port),
            "client": ("127.0.0.1", self.next_client_port()),
            "scheme": "http",
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in headers],
            "state": dict(self.state),
            "method": method,
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
        }

    def next_client_port(self) -> int:
        with self._lock:
            self._client_port = self._client_port + 1 if self._client_port < 60000 else 40001
            return self._client_port

    async def _run_lifespan(self) -> None:
        self._shutdown = asyncio.Event()
        started = False

        async def receive() -> dict[str, Any]:
            nonlocal started
            if not started:
                started = True
                return {"type": "lifespan.startup"}
            assert self._shutdown is not None
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                self._startup.set_result(None)
            elif kind == "lifespan.startup.failed":
                self._startup.set_exception(RuntimeError(message.get("message", "startup failed")))
            elif kind == "lifespan.shutdown.failed":
                raise RuntimeError(message.get("message", "shutdown failed"))

        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state
        try:
            await self.app(scope, receive, send)  # type: ignore[arg-type]
        except BaseException as exc:
            if not self._startup.done():
                self._startup.set_exception(exc)
            raise

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.pop("limits", None)  # one in-process "connection" per request anyway
        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, transport=InProcessTransport(self), **kwargs)

    def stop(self) -> None:
        portal, self.portal = self.portal, None
        if portal is None:
            return
        RUNNING.pop(self.url, None)
        try:
            # as uvicorn at shutdown: requests still open (a stream nobody closed) end first,
            # then the lifespan's shutdown runs
            for task in list(self.tasks):
                task.cancel()
            concurrent.futures.wait(list(self.tasks), timeout=10)
            if self._shutdown is not None:
                portal.call(self._shutdown.set)
            with contextlib.suppress(concurrent.futures.CancelledError):
                self._lifespan.result(30)
        finally:
            self._stack.close()
            self._close_log()

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_app(
    data_dir: Path, *, database_url: str | None = None, env: dict[str, str] | None = None
) -> AppServer:
    """What `start_server()` starts, in this process: the settings `artifacts serve` would read
    (ARTIFACTS_DATA_DIR, ARTIFACTS_LOG_LEVEL=warning, `env`), migrated first as serve does."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    environ = {
        "ARTIFACTS_HOST": "127.0.0.1",
        "ARTIFACTS_PORT": str(port),
        "ARTIFACTS_DATA_DIR": str(data_dir),
        "ARTIFACTS_LOG_LEVEL": "warning",
        **(env or {}),
    }
    if database_url:
        environ["ARTIFACTS_DATABASE_URL"] = database_url
    settings = settings_for(environ)
    upgrade(settings.resolved_database_url)
    return AppServer(settings, port)
