"""How `artifacts serve` stops on SIGINT (Ctrl-C) or SIGTERM: uvicorn, told what to end when.

uvicorn alone waits `timeout_graceful_shutdown` for the requests in flight, then cancels what
is left: an upload still arriving was answered 500 with a CancelledError traceback, a download
was cut with another, and an event stream, which never ends by itself, held every shutdown for
the whole timeout. Here, with the app's Stopping (app/http.py):

1. At once: uvicorn stops accepting connections and closes idle ones; event streams end
   cleanly (their readers reconnect, with Last-Event-ID); every other request may finish.
2. After `grace` seconds: a request still waiting for its body is answered 503
   `shutting_down` with `Connection: close`, one log line each, and nothing is stored (the
   blob store removes its staging file). A moment later the connections still open (a
   download to a slow reader, say) are closed, in one log line.
3. uvicorn's own timeout, a little later still, is the last resort for a request stuck in
   the server's own work (a database locked by another process, say): its cancellation ends
   the request in one log line, never with a traceback or a 500. A second Ctrl-C does steps 2
   and 3 at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import sys
from typing import Any, cast

import uvicorn
from litestar import Litestar
from litestar.types import HTTPScope, Message, Receive, Scope, Send
from uvicorn.main import STARTUP_FAILURE

from app.errors import problem
from app.http import Stopping, stopping_of

log = logging.getLogger("artifacts.shutdown")

CLOSE_AFTER = 1.0  # after the grace period: time for the 503s to go out before closing
BACKSTOP = 2.0  # then uvicorn's own timeout

STOPPED = (
    "The server stopped before this request finished, so whether it took effect is unknown; "
    "retry it (with an Idempotency-Key, a retry is safe)."
)


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, stopping: Stopping, grace: float) -> None:
        super().__init__(config)
        self.stopping = stopping
        self.grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.stopping.begin()
        when = f"{self.grace:g}s after shutdown began"
        ending = asyncio.create_task(self._end_what_is_left(self.grace, CLOSE_AFTER, when))
        try:
            await super().shutdown(sockets)
        finally:
            ending.cancel()
        if self.force_exit:  # a second Ctrl-C: uvicorn waits no longer, and neither do we
            await self._end_what_is_left(0, 0.1, "at a second signal")
            # uvicorn skips the app's shutdown then; cancelled at the loop's end instead, it
            # would log a traceback, and the store would not be closed in order
            await self.lifespan.shutdown()

    async def _end_what_is_left(self, grace: float, close_after: float, when: str) -> None:
        """Once `grace` is over: the 503s; `close_after` later (uvicorn's shutdown may end
        first, when nothing is left), every connection still open is closed."""
        await asyncio.sleep(grace)
        self.stopping.expire()
        await asyncio.sleep(close_after)
        self._close_connections(when)

    def _close_connections(self, when: str) -> None:
        connections = list(self.server_state.connections)
        if not connections:
            return
        log.warning(
            "shutdown: closed %d connection(s) still busy %s (a response cut short, or a "
            "request not finished)",
            len(connections),
            when,
        )
        for connection in connections:
            # uvicorn's HTTP protocols keep their transport; a closed one reads as a disconnect
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()


class EndQuietly:
    """The app, with a request cancelled during shutdown (uvicorn's last-resort timeout, or the
    end of the event loop) ended as a request should end, in one log line, where uvicorn would
    log a traceback and answer 500: with a 503 if nothing was answered yet and its connection
    is still open (by then GracefulServer has normally closed it), else quietly."""

    def __init__(self, app: Litestar, stopping: Stopping) -> None:
        self.app = app
        self.stopping = stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.stopping.begun.is_set() or task is None:
                raise
            task.uncancel()
            http = cast("HTTPScope", scope)
            log.warning(
                "shutdown: %s %s cancelled, still running when the server stopped (whether it "
                "took effect is unknown)",
                http["method"],
                http["path"],
            )
            if not started:
                await problem(503, "shutting_down", STOPPED, {"Connection": "close"})(
                    scope, receive, send
                )


def run(app: Litestar, *, grace: float, **options: Any) -> None:
    """`uvicorn.run(app, **options)`, stopping as described above: requests in flight have
    `grace` seconds to finish."""
    stopping = stopping_of(app)
    timeout = math.ceil(grace + CLOSE_AFTER + BACKSTOP)
    config = uvicorn.Config(EndQuietly(app, stopping), timeout_graceful_shutdown=timeout, **options)
    server = GracefulServer(config, stopping, grace)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the signal it stopped for again, once stopped
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)
