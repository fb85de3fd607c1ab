"""A TCP proxy on loopback that misbehaves on purpose, for the client's tests.

It forwards bytes between a client and a real server, and on the connections it is told to
(the first `faulty` ones; None: every one) it can cut the connection (both sides reset) after
N bytes of the request or of the response, or change one byte of a response: the last byte of
the first occurrence of `corrupt` in the bytes it forwards to the client. It runs its own
event loop in a thread, so synchronous tests and subprocesses can use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

CHUNK = 64 * 1024


class _Cut(Exception):
    pass


@dataclass
class Faults:
    drop_request_after: int | None = None  # bytes client -> server before the cut
    drop_response_after: int | None = None  # bytes server -> client before the cut
    corrupt: bytes | None = None  # flip the last byte of its first occurrence (to the client)
    faulty: int | None = 1  # how many connections misbehave, from the first; None: all


@dataclass
class Proxy:
    upstream_port: int
    faults: Faults = field(default_factory=Faults)
    connections: int = 0
    cuts: int = 0
    corrupted: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), self._loop)
        self._thread.join(10)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        faulty = self.faults.faulty is None or index < self.faults.faulty
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        f = self.faults
        tasks = [
            asyncio.ensure_future(
                self._pipe(reader, up_writer, f.drop_request_after if faulty else None, None)
            ),
            asyncio.ensure_future(
                self._pipe(
                    up_reader,
                    writer,
                    f.drop_response_after if faulty else None,
                    f.corrupt if faulty else None,
                )
            ),
        ]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        cut = any(isinstance(t.exception(), _Cut) for t in done if not t.cancelled())
        if cut:
            self.cuts += 1
            writer.transport.abort()  # a reset on both sides, as a dropped network does
            up_writer.transport.abort()
            for t in pending:
                t.cancel()
        else:
            await asyncio.gather(*pending, return_exceptions=True)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        cut_after: int | None,
        corrupt: bytes | None,
    ) -> None:
        count = 0
        tail = b""
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                if corrupt is not None and self.corrupted == 0:
                    joined = tail + data
                    at = joined.find(corrupt)
                    if at >= 0:
                        last = at + len(corrupt) - 1 - len(tail)  # in `data`: the marker ends here
                        flipped = bytearray(data)
                        flipped[last] ^= 0x01
                        data = bytes(flipped)
                        self.corrupted += 1
                    tail = joined[-(len(corrupt) - 1) :] if len(corrupt) > 1 else b""
                if cut_after is not None and count + len(data) > cut_after:
                    dst.write(data[: cut_after - count])
                    with contextlib.suppress(Exception):
                        await dst.drain()
                    raise _Cut
                dst.write(data)
                await dst.drain()
                count += len(data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        with contextlib.suppress(Exception):
            if dst.can_write_eof():
                dst.write_eof()
