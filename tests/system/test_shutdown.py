"""Stopping `artifacts serve` with requests in flight: SIGINT (Ctrl-C) or SIGTERM (a service
manager), against real server processes (app/shutdown.py).

- An upload whose body is still arriving when the grace period ends (a raw body, a multipart
  upload, a multipart create) is answered 503 `shutting_down` with `Connection: close`; the
  server logs exactly one line about it and no traceback; nothing is stored: no staging file,
  no blob, no row, no event, the artifact as it was. (Before: 500 and a 75-line CancelledError
  traceback, issue 16.)
- An upload that ends within the grace period is stored as usual, and the server exits at once.
- A download to a reader too slow to finish is closed after the grace period, in one line.
- An event stream ends cleanly at once: it does not hold the shutdown for the grace period.
- A second Ctrl-C ends what is left at once, just as cleanly.
- A request stuck in the server's own work (a database another process has locked) is
  cancelled by uvicorn's last-resort timeout in one log line, not a traceback.

Every case checks that the process exits promptly: within the grace period and a margin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.http import Stopping
from app.shutdown import STOPPED, EndQuietly
from tests.support import rawhttp
from tests.support.abuse import CREATE_FIELDS, JSON, B, form_field
from tests.support.servers import Server, start_server

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
PIECE = b"u" * (64 << 10)
PACE = 0.02  # seconds between pieces: about 3 MB/s, so 300 MB is far from done
DECLARED = 300 * MiB  # the Content-Length of an upload that is interrupted
EXIT_MARGIN = 3.0  # seconds past the grace period the process may take to exit (1 s of it
# is app/shutdown.py's CLOSE_AFTER)
FILE_HEAD = (
    f'--{B}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
    "Content-Type: application/octet-stream\r\n\r\n"
).encode()
FORM = [("Content-Type", f"multipart/form-data; boundary={B}")]


@contextmanager
def serving(tmp_path: Path, grace: float) -> Iterator[Server]:
    server = start_server(tmp_path / "data", env={"ARTIFACTS_SHUTDOWN_GRACE": str(grace)})
    try:
        yield server
    finally:
        server.stop()


def seed(server: Server) -> str:
    with server.client() as client:
        r = client.post("/artifacts", json={**CREATE_FIELDS, "content": "kept as it was"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def store(server: Server) -> dict[str, Any]:
    """Everything an upload could leave behind: rows, events, blob files, staging files."""
    blobs = server.data_dir / "blobs"
    with closing(sqlite3.connect(server.data_dir / "artifacts.db")) as db:
        rows = db.execute("SELECT id, content_hash, size_bytes, updated_at FROM artifacts")
        return {
            "artifacts": sorted(rows),
            "blob rows": sorted(db.execute("SELECT digest, size FROM blobs")),
            "events": db.execute("SELECT count(*) FROM events").fetchone()[0],
            "blob files": sorted(p.name for p in (blobs / "sha256").rglob("*") if p.is_file()),
            "staging": sorted(p.name for p in (blobs / "tmp").iterdir()),
        }


def wait_for(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def exited_within(server: Server, since: float, limit: float) -> int:
    """The process's exit status, once it has exited no later than `limit` s after `since`."""
    code = server.process.wait(limit + 5)
    took = time.monotonic() - since
    assert took < limit, f"exited {took:.1f}s after the signal (limit {limit}s)"
    return code


def shutdown_lines(server: Server, uvicorn_errors: tuple[str, ...] = ()) -> list[str]:
    """The server's log lines about ending requests, after checking it holds no traceback
    and no error of uvicorn's (an exception in the app, cancelled tasks) but those expected."""
    text = server.log.read_text()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("ERROR")]
    assert [line.removeprefix("ERROR:").strip() for line in errors] == list(uvicorn_errors), text
    lines = [line for line in text.splitlines() if "shutdown:" in line]
    # each said as a warning, in uvicorn's format like every line of the server (app/logconfig.py)
    assert all(line.startswith("WARNING:  shutdown: ") for line in lines), lines
    return [line.removeprefix("WARNING:  ") for line in lines]


UPLOADS = {  # target, headers
    "raw upload": ("/artifacts/{aid}/upload", [("Content-Type", "application/octet-stream")]),
    "form upload": ("/artifacts/{aid}/upload", FORM),
    "form create": ("/artifacts", FORM),
}


def upload_head(kind: str) -> bytes:
    if kind == "raw upload":
        return b""
    fields = CREATE_FIELDS if kind == "form create" else {}
    return b"".join(form_field(k, v) for k, v in fields.items()) + FILE_HEAD


@pytest.mark.parametrize(
    ("kind", "sig"),
    [
        ("raw upload", signal.SIGINT),
        ("form upload", signal.SIGINT),
        ("form create", signal.SIGINT),
        ("raw upload", signal.SIGTERM),
    ],
    ids=["raw upload, SIGINT", "form upload, SIGINT", "form create, SIGINT", "raw, SIGTERM"],
)
def test_an_upload_still_arriving_when_the_grace_period_ends_is_answered_503(
    tmp_path: Path, kind: str, sig: signal.Signals
) -> None:
    grace = 1.0
    with serving(tmp_path, grace) as server:
        aid = seed(server)
        before = store(server)
        path, headers = UPLOADS[kind]
        target = path.format(aid=aid)
        head = upload_head(kind)
        with rawhttp.Connection(server.url) as conn:
            conn.start("POST", target, headers, content_length=len(head) + DECLARED)
            conn.send(head)
            for _ in range(32):  # 2 MiB: past the blob store's first 1 MiB write
                conn.send(PIECE)
                time.sleep(PACE)
            wait_for(lambda: store(server)["staging"])  # mid-flight, in the blob store
            os.kill(server.process.pid, sig)
            signalled = time.monotonic()
            try:
                while not conn.answered(PACE):  # the client keeps sending, as a real one would
                    conn.send(PIECE)
                    assert time.monotonic() - signalled < grace + 5, "no answer"
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered and closed: read what it said
            r = conn.response(timeout=5)
            answered = time.monotonic() - signalled
        code = exited_within(server, signalled, grace + EXIT_MARGIN)

    assert r.status == 503, r.body
    assert r.json() == {
        "detail": "The server is shutting down and did not wait for the rest of the request "
        "body; nothing was stored. Retry the request.",
        "code": "shutting_down",
    }
    assert r.header("connection") == "close"
    assert grace * 0.9 <= answered < grace + 2, answered  # the grace period was given
    # SIGINT: uvicorn raises it again once stopped, and `serve` ends normally (as before this
    # change); SIGTERM: it ends the process (uvicorn's behaviour, which a service manager expects)
    assert code == (0 if sig == signal.SIGINT else -signal.SIGTERM)
    assert shutdown_lines(server) == [
        f"shutdown: POST {target} answered 503, its body still arriving when the server stopped "
        "waiting; nothing was stored"
    ]
    assert store(server) == before


def test_an_upload_that_ends_within_the_grace_period_is_stored(tmp_path: Path) -> None:
    grace = 5.0
    data = os.urandom(4 * MiB)
    with serving(tmp_path, grace) as server:
        aid = seed(server)
        target = f"/artifacts/{aid}/upload"
        headers = [("Content-Type", "application/octet-stream")]
        with rawhttp.Connection(server.url) as conn:
            conn.start("POST", target, headers, content_length=len(data))
            conn.send(data[: 2 * MiB])
            wait_for(lambda: store(server)["staging"])
            os.kill(server.process.pid, signal.SIGINT)
            signalled = time.monotonic()
            time.sleep(0.3)  # shutdown has begun: new connections are refused
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{server.url}/healthz", timeout=2)
            conn.send(data[2 * MiB :])
            r = conn.response(timeout=5)
        assert r.status == 200, r.body
        # nothing is left in flight: the process exits without waiting for the grace period
        exited_within(server, signalled, 2.5)

    assert shutdown_lines(server) == []

    digest = hashlib.sha256(data).hexdigest()
    after = store(server)
    assert (aid, digest, len(data)) in [row[:3] for row in after["artifacts"]]
    assert digest in after["blob files"] and after["staging"] == []


def test_a_download_too_slow_to_finish_is_closed_after_the_grace_period(tmp_path: Path) -> None:
    grace = 1.0
    size = 32 * MiB
    with serving(tmp_path, grace) as server:
        aid = seed(server)
        with server.client() as client:
            r = client.post(f"/artifacts/{aid}/upload", content=os.urandom(size))
            assert r.status_code == 200, r.text
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader
            sock.connect(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            sock.sendall(f"GET /artifacts/{aid}/download HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            received = sock.recv(4096)
            assert received.startswith(b"HTTP/1.1 200 ")
            os.kill(server.process.pid, signal.SIGINT)
            signalled = time.monotonic()
            time.sleep(grace * 0.8)
            assert server.process.poll() is None  # a download in flight is given the grace
            exited_within(server, signalled, grace + EXIT_MARGIN)
            sock.settimeout(5)
            try:  # what the kernel still holds, then the end of the connection
                while chunk := sock.recv(1 << 20):
                    received += chunk
            except ConnectionResetError:
                pass
    assert len(received) < size  # cut short: the client can tell (Content-Length)
    assert shutdown_lines(server) == [
        f"shutdown: closed 1 connection(s) still busy {grace:g}s after shutdown began "
        "(a response cut short, or a request not finished)"
    ]


def test_an_event_stream_ends_cleanly_at_once(tmp_path: Path) -> None:
    grace = 30.0  # far longer than the test: the stream must not wait for it
    with serving(tmp_path, grace) as server:
        seed(server)
        with rawhttp.Connection(server.url) as conn:
            conn.start("GET", "/store/events", [("Accept", "text/event-stream")])
            wait_for(lambda: conn.answered())
            os.kill(server.process.pid, signal.SIGINT)
            signalled = time.monotonic()
            r = conn.response(timeout=5)  # the whole chunked body, to its last chunk
            ended = time.monotonic() - signalled
            conn.sock.settimeout(5)
            assert conn.sock.recv(1) == b""  # and then the connection closes
        exited_within(server, signalled, 3.0)
    assert r.status == 200 and r.header("content-type") == "text/event-stream; charset=utf-8"
    assert r.body.startswith(b"retry: 2000\n\n") and b"event: artifact.created" in r.body
    assert ended < 1.5, ended
    assert shutdown_lines(server) == []


def test_a_second_sigint_ends_what_is_left_at_once(tmp_path: Path) -> None:
    grace = 30.0
    with serving(tmp_path, grace) as server:
        aid = seed(server)
        before = store(server)
        target = f"/artifacts/{aid}/upload"
        with rawhttp.Connection(server.url) as conn:
            conn.start("POST", target, UPLOADS["raw upload"][1], content_length=DECLARED)
            for _ in range(32):
                conn.send(PIECE)
                time.sleep(PACE)
            wait_for(lambda: store(server)["staging"])
            os.kill(server.process.pid, signal.SIGINT)
            signalled = time.monotonic()
            time.sleep(0.5)
            os.kill(server.process.pid, signal.SIGINT)  # "Waiting for connections to close.
            # (CTRL+C to force quit)"
            try:
                while not conn.answered(PACE):
                    conn.send(PIECE)
                    assert time.monotonic() - signalled < 5, "no answer"
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = conn.response(timeout=5)
        exited_within(server, signalled, 2.5)
    assert r.status == 503 and r.json()["code"] == "shutting_down", r.body
    lines = shutdown_lines(server)
    assert lines == [
        f"shutdown: POST {target} answered 503, its body still arriving when the server stopped "
        "waiting; nothing was stored"
    ]
    assert store(server) == before


@pytest.mark.slow
def test_a_request_stuck_in_the_servers_own_work_is_cancelled_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A create whose body has arrived but whose commit waits for a database another process
    has locked: its connection is closed after the grace period, and uvicorn's own timeout
    (grace + 3 s, rounded up) cancels it, which ends it in one line instead of a traceback."""
    grace = 1.0
    with serving(tmp_path, grace) as server:
        seed(server)
        body = json.dumps({**CREATE_FIELDS, "content": "stuck"}).encode()
        lock = sqlite3.connect(server.data_dir / "artifacts.db", isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            with rawhttp.Connection(server.url) as conn:
                conn.start("POST", "/artifacts", JSON, content_length=len(body))
                conn.send(body)
                time.sleep(0.3)  # the body is in: the create waits for the database
                os.kill(server.process.pid, signal.SIGINT)
                signalled = time.monotonic()
                with pytest.raises(ConnectionError):  # closed after the grace period
                    conn.response(timeout=grace + 3)
            # uvicorn's timeout: the create is cancelled, and ends once its database work has
            wait_for(lambda: "Cancel 1 running" in server.log.read_text(), timeout=grace + 5)
        finally:
            lock.execute("ROLLBACK")  # else that waits out SQLite's busy timeout (30 s)
            lock.close()
        exited_within(server, signalled, grace + EXIT_MARGIN + 3)

    lines = shutdown_lines(
        server, ("Cancel 1 running task(s), timeout graceful shutdown exceeded",)
    )
    assert lines == [
        f"shutdown: closed 1 connection(s) still busy {grace:g}s after shutdown began "
        "(a response cut short, or a request not finished)",
        "shutdown: POST /artifacts cancelled, still running when the server stopped (whether it "
        "took effect is unknown)",
    ]
    after = store(server)  # whichever it was, nothing partial
    assert after["staging"] == []
    assert {row[1] for row in after["artifacts"]} <= set(after["blob files"])


def test_a_request_cancelled_before_answering_gets_a_503_where_its_connection_is_open() -> None:
    """EndQuietly on its own (GracefulServer has normally closed the connection before
    uvicorn's timeout cancels a request, so no server above can show this): a request
    cancelled during shutdown answers 503 `shutting_down`, not uvicorn's 500; a cancellation
    before shutdown propagates untouched."""

    async def stuck(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()  # a request that never answers by itself

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def cancelled(stopping: Stopping) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/artifacts", "headers": []}
        task = asyncio.create_task(EndQuietly(stuck, stopping)(scope, receive, send))
        await asyncio.sleep(0.01)
        task.cancel()
        await task
        return sent

    stopping = Stopping()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled(stopping))
    stopping.begin()
    start, body = asyncio.run(cancelled(stopping))
    assert start["status"] == 503 and (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"]) == {"detail": STOPPED, "code": "shutting_down"}
