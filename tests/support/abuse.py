"""Hostile input: the limits set small, multipart bodies built by hand, the checks of a clear
answer, and the attack harness (tests/test_abuse.py and tests/system/test_abuse_wire.py)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from app.settings import Settings
from tests.support import rawhttp
from tests.support.inprocess import AppServer
from tests.support.servers import Server

KiB = 1 << 10


MiB = 1 << 20


B = "abuse-7c2f9e41d0b8"  # the multipart boundary of these tests


FORM = [("Content-Type", f"multipart/form-data; boundary={B}")]


JSON = [("Content-Type", "application/json")]


TIGHT = {
    "ARTIFACTS_MAX_TITLE_CHARS": "20",
    "ARTIFACTS_MAX_ID_CHARS": "40",
    "ARTIFACTS_MAX_DERIVED_FROM": "3",
    "ARTIFACTS_MAX_FORM_PARTS": "12",
    "ARTIFACTS_MAX_PART_HEADER_BYTES": "1024",
    "ARTIFACTS_MAX_FORM_FIELDS_BYTES": "2048",
    "ARTIFACTS_MAX_JSON_BODY_BYTES": "4096",
    "ARTIFACTS_MAX_METADATA_BYTES": "256",
    "ARTIFACTS_MAX_UPLOAD_BYTES": "8192",
    "ARTIFACTS_BODY_IDLE_TIMEOUT": "0.5",
}


HOSTILE_IDLE = 1.0  # the `hostile` server's ARTIFACTS_BODY_IDLE_TIMEOUT; every other limit default


DEFAULTS = Settings()


MEMORY_BUDGET = 64 * MiB  # what one hostile request may add to the server's resident set


ANSWER_WITHIN = 5.0  # seconds from the first byte sent to the answer


def part(headers: Iterable[str], data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    head = "".join(f"{h}\r\n" for h in headers)
    return f"--{B}\r\n{head}\r\n".encode() + raw + b"\r\n"


def form_field(name: str, value: bytes | str) -> bytes:
    return part([f'Content-Disposition: form-data; name="{name}"'], value)


def file_part(data: bytes = b"file bytes", filename: str = "f.bin") -> bytes:
    disposition = f'Content-Disposition: form-data; name="file"; filename="{filename}"'
    return part([disposition, "Content-Type: application/octet-stream"], data)


END = f"--{B}--\r\n".encode()


CREATE_FIELDS = {"workflow_id": "wf-abuse", "artifact_type": "other", "title": "t"}


def create_form(*extra: bytes, file: bytes | None = None, **fields: str) -> bytes:
    values = {**CREATE_FIELDS, **fields}
    head = b"".join(form_field(k, v) for k, v in values.items())
    return head + b"".join(extra) + (file if file is not None else file_part()) + END


def new_artifact(client: httpx.Client, **fields: Any) -> str:
    body = {**CREATE_FIELDS, "content": "seed", **fields}
    r = client.post("/artifacts", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def problem(r: httpx.Response | rawhttp.RawResponse, status: int, code: str, number: float) -> str:
    """`{"detail": <sentence stating number>, "code": code}` with `status`; returns the detail."""
    got = r.status_code if isinstance(r, httpx.Response) else r.status
    body = r.json()
    assert (got, set(body), body.get("code")) == (status, {"detail", "code"}, code), body
    text = str(number) if isinstance(number, int) else f"{number:g}"
    assert re.search(rf"(?<![\d.]){re.escape(text)}(?![\d.]\d)", body["detail"]), body["detail"]
    return str(body["detail"])


def only_error(r: httpx.Response) -> dict[str, Any]:
    """The one item of a FastAPI-shaped 422."""
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"detail"} and len(body["detail"]) == 1, body
    item = body["detail"][0]
    assert {"type", "loc", "msg", "input"} <= set(item) <= {"type", "loc", "msg", "input", "ctx"}
    return dict(item)


def too_long(r: httpx.Response, loc: list[Any], limit: int, value: str) -> None:
    """Exactly what a pydantic `Field(max_length=limit)` answers through FastAPI."""
    assert only_error(r) == {
        "type": "string_too_long",
        "loc": loc,
        "msg": f"String should have at most {limit} characters",
        "input": value,
        "ctx": {"max_length": limit},
    }


def post_json_bytes(client: httpx.Client, path: str, body: bytes, method: str = "POST") -> Any:
    return client.request(method, path, content=body, headers={"Content-Type": "application/json"})


def json_of_size(size: int, **fields: Any) -> bytes:
    """A valid create body of exactly `size` bytes (the content pads it)."""
    base = {**CREATE_FIELDS, **fields, "content": ""}
    pad = size - len(json.dumps(base).encode())
    assert pad > 0
    body = json.dumps({**base, "content": "x" * pad}).encode()
    assert len(body) == size
    return body


def trickle(
    url: str,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    sent: int,
    stall: float,
) -> tuple[rawhttp.RawResponse, float, bool]:
    """Send the head and `sent` bytes of the body, then nothing: the answer, how long after the
    last byte it came, and whether the server closed the connection after it."""
    with rawhttp.Connection(url) as conn:
        conn.start(method, target, headers, content_length=len(body))
        conn.send(body[:sent])
        started = time.monotonic()
        r = conn.response(timeout=stall + 10)
        waited = time.monotonic() - started
        conn.sock.settimeout(5)
        try:
            closed = conn.sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
        return r, waited, closed


STALLS = {
    "json create": ("POST", "/artifacts", JSON, None),
    "json update": ("PUT", "/artifacts/{aid}", JSON, None),
    "form create, in the fields": ("POST", "/artifacts", FORM, 30),
    "form create, in the file": ("POST", "/artifacts", FORM, -30),
    "form upload": ("POST", "/artifacts/{aid}/upload", FORM, -30),
    "raw upload": ("POST", "/artifacts/{aid}/upload", [("Content-Type", "text/plain")], None),
}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class Monitor:
    """While a hostile request is in flight: GET /healthz again and again from another thread,
    and sample the server's resident set."""

    server: Server
    baseline: int = 0
    peak: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=5) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    r = client.get("/healthz")
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self.latencies.append(time.monotonic() - started)
                self.peak = max(self.peak, rss_bytes(self.server.process.pid))
                self._stop.wait(0.02)

    def _wait_for_probes(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.latencies) < count and time.monotonic() < deadline:
            time.sleep(0.005)

    @contextmanager
    def watching(self) -> Iterator[Monitor]:
        self.baseline = self.peak = rss_bytes(self.server.process.pid)
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        self._wait_for_probes(1)  # connected and answering before the attack begins
        try:
            yield self
        finally:
            self._wait_for_probes(len(self.latencies) + 1)  # one that overlapped the attack
            self._stop.set()
            thread.join(10)
        self.peak = max(self.peak, rss_bytes(self.server.process.pid))
        assert self.failures == [], self.failures
        assert self.latencies, "healthz was never probed"
        assert max(self.latencies) < 1.0, max(self.latencies)
        growth = self.peak - self.baseline
        assert growth < MEMORY_BUDGET, f"server RSS grew by {growth / MiB:.1f} MiB"


def attack(
    server: Server,
    target: str,
    headers: list[tuple[str, str]],
    pieces: Iterable[bytes],
    *,
    total: int | None = None,
) -> tuple[rawhttp.RawResponse, float]:
    """Send `pieces` (a Content-Length of `total`, else chunked) until the server answers, then
    read the answer: it and the seconds it took, with /healthz probed and RSS watched meanwhile."""
    with Monitor(server).watching(), rawhttp.Connection(server.url) as conn:
        started = time.monotonic()
        conn.start("POST", target, headers, content_length=total, chunked=total is None)
        try:
            for piece in pieces:
                if conn.answered():
                    break
                conn.send(piece)
            else:
                if total is None:
                    conn.finish_chunked()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed: read what it said
        r = conn.response(timeout=ANSWER_WITHIN + 5)
        elapsed = time.monotonic() - started
    assert elapsed < ANSWER_WITHIN, elapsed
    return r, elapsed


def repeat(piece: bytes, size: int, chunk: int = 256 * KiB) -> Iterator[bytes]:
    block = piece * max(1, chunk // len(piece))
    for _ in range(size // len(block)):
        yield block


BOUNDARIES = {  # Content-Type parameters; True: the boundary is too long (else: no such body)
    "71 characters": ("b" * 71, True),
    "8,000 characters": ("b" * 8000, True),
    "quotes and backslashes": ('"' + '\\"' * 3000 + '"', True),
    "an unclosed quote": ('"' + "a;" * 3000, True),
    "semicolons after it": ("x" + ";" * 6000, False),
    "70 characters of hyphens": ("-" * 70, False),
}


JUNK = {
    "CR/LF before the first boundary": (b"\r\n", True),
    "a CR then no hyphen for megabytes": (b"\rjunk-free", True),
    "junk before the first boundary": (b"garbage!", True),
    "CR/LF after the closing boundary": (b"\r\n", False),
}


S = TypeVar("S", AppServer, Server)


@contextmanager
def stopped_cleanly(server: S) -> Iterator[S]:
    """A server for a module of hostile requests: stopped afterwards, and its log may hold no
    traceback, whatever was thrown at it."""
    try:
        yield server
    finally:
        server.stop()
        assert "Traceback" not in server.log.read_text()
