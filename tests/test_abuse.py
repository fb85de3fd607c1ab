"""Hostile input: every input limit is a setting, and passing one answers a clear 413/422/400/408
that states the number, quickly, with bounded server memory, while the server keeps serving.

Two real servers (SQLite, module-scoped): `tight` has every limit set small so that each one can
be shown exactly at and just past its number; `hostile` keeps the default limits (only the body
idle timeout is short) and takes the denial-of-service inputs: a 1,001-part body, a 50 MiB form
field, a 1 MiB part header, pathological boundaries, megabytes of CR/LF around the boundaries,
and a client trickling its body. During each attack another thread probes GET /healthz and
samples the server's VmRSS from /proc.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.artifacts.multipart import FormLimits
from app.settings import Settings
from tests import rawhttp
from tests.conftest import Server, start_server

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


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("tight") / "data", env=TIGHT)
    try:
        yield server
    finally:
        server.stop()
        assert "Traceback" not in server.log.read_text()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"ARTIFACTS_BODY_IDLE_TIMEOUT": str(HOSTILE_IDLE)}
    server = start_server(tmp_path_factory.mktemp("hostile") / "data", env=env)
    try:
        yield server
    finally:
        server.stop()
        assert "Traceback" not in server.log.read_text()


@pytest.fixture(scope="module")
def http(tight: Server) -> Iterator[httpx.Client]:
    with tight.client() as client:
        yield client


# -- helpers ---------------------------------------------------------------------------------


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


# -- the settings ----------------------------------------------------------------------------


def test_every_limit_is_a_setting_with_a_safe_default() -> None:
    assert (
        DEFAULTS.max_title_chars,
        DEFAULTS.max_id_chars,
        DEFAULTS.max_derived_from,
        DEFAULTS.max_form_parts,
        DEFAULTS.max_part_header_bytes,
        DEFAULTS.max_form_fields_bytes,
        DEFAULTS.body_idle_timeout,
        DEFAULTS.max_json_body_bytes,
        DEFAULTS.max_metadata_bytes,
        DEFAULTS.max_upload_bytes,
    ) == (1000, 255, 100, 100, 16 * KiB, MiB, 30.0, 64 * MiB, 64 * KiB, 5 << 30)
    # FormLimits() (a FormStream built without settings) holds the same defaults
    assert FormLimits() == FormLimits.from_settings(DEFAULTS)
    tight = Settings(**{k.removeprefix("ARTIFACTS_").lower(): v for k, v in TIGHT.items()})
    assert tight.body_idle_timeout == 0.5 and tight.max_form_parts == 12


# -- one test per limit: the status, the code, the number; exactly the limit is accepted --------


def test_json_body_size(tight: Server, http: httpx.Client) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_JSON_BODY_BYTES"])
    assert post_json_bytes(http, "/artifacts", json_of_size(limit)).status_code == 201
    r = post_json_bytes(http, "/artifacts", json_of_size(limit + 1))
    detail = problem(r, 413, "payload_too_large", limit)
    assert detail == f"The request body is larger than the limit of {limit} bytes."
    # without a Content-Length (chunked) the stream is cut at the limit just the same
    with rawhttp.Connection(tight.url) as conn:
        conn.start("POST", "/artifacts", JSON, chunked=True)
        body = json_of_size(limit + 1)
        conn.send(body[:limit])
        conn.send(body[limit:])
        conn.finish_chunked()
        problem(conn.response(), 413, "payload_too_large", limit)


def test_metadata_size(http: httpx.Client) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_METADATA_BYTES"])
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    at_limit = {"k": "m" * (limit - overhead)}
    r = http.post("/artifacts", json={**CREATE_FIELDS, "content": "c", "metadata": at_limit})
    assert r.status_code == 201, r.text
    r = http.post(
        "/artifacts", json={**CREATE_FIELDS, "content": "c", "metadata": {"k": "m" * limit}}
    )
    item = only_error(r)
    assert (item["type"], item["loc"], item["ctx"]["limit"]) == (
        "metadata_too_large",
        ["body", "metadata"],
        limit,
    )
    assert str(limit) in item["msg"]


@pytest.mark.parametrize("transport", ["json", "form", "update"])
def test_title_length(http: httpx.Client, transport: str) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_TITLE_CHARS"])
    aid = new_artifact(http)

    def send(title: str) -> httpx.Response:
        if transport == "json":
            return http.post("/artifacts", json={**CREATE_FIELDS, "title": title, "content": "c"})
        if transport == "update":
            return http.put(f"/artifacts/{aid}", json={"title": title})
        return http.post("/artifacts", content=create_form(title=title), headers=dict(FORM))

    at_limit = "é" * limit  # characters, not bytes
    assert send(at_limit).status_code in (200, 201)
    too_long(send(at_limit + "t"), ["body", "title"], limit, at_limit + "t")


@pytest.mark.parametrize("name", ["workflow_id", "phase_id", "session_id", "created_by"])
@pytest.mark.parametrize("transport", ["json", "form"])
def test_id_lengths(http: httpx.Client, name: str, transport: str) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_ID_CHARS"])

    def send(value: str) -> httpx.Response:
        if transport == "json":
            return http.post("/artifacts", json={**CREATE_FIELDS, name: value, "content": "c"})
        return http.post("/artifacts", content=create_form(**{name: value}), headers=dict(FORM))

    r = send("i" * limit)
    assert r.status_code == 201, r.text
    assert http.get(f"/artifacts/{r.json()['id']}").json()[name] == "i" * limit
    too_long(send("i" * (limit + 1)), ["body", name], limit, "i" * (limit + 1))


@pytest.mark.parametrize("transport", ["json", "form"])
def test_content_type_length(http: httpx.Client, transport: str) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_ID_CHARS"])

    def send(value: str) -> httpx.Response:
        if transport == "json":
            body = {**CREATE_FIELDS, "content": "c", "content_type": value}
            return http.post("/artifacts", json=body)
        return http.post("/artifacts", content=create_form(content_type=value), headers=dict(FORM))

    at_limit = "text/" + "x" * (limit - 5)
    r = send(at_limit)
    assert r.status_code == 201, r.text
    too_long(send(at_limit + "y"), ["body", "content_type"], limit, at_limit + "y")


def test_import_request_ids_are_bounded(http: httpx.Client) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_ID_CHARS"])
    body = {"sandbox_id": "s" * (limit + 1), "workflow_id": "w"}
    too_long(
        http.post("/imports/crownest", json=body), ["body", "sandbox_id"], limit, body["sandbox_id"]
    )
    body = {"sandbox_id": "s", "workflow_id": "w", "artifact_ids": ["a", "b" * (limit + 1)]}
    r = http.post("/imports/crownest", json=body)
    too_long(r, ["body", "artifact_ids", 1], limit, "b" * (limit + 1))


def test_derived_from_entry_length(http: httpx.Client) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_ID_CHARS"])
    parent = new_artifact(http)
    body = {**CREATE_FIELDS, "content": "c"}
    long_entry = "p" * (limit + 1)
    r = http.post("/artifacts", json={**body, "derived_from": [parent, long_entry]})
    too_long(r, ["body", "derived_from", 1], limit, long_entry)
    # at the limit the length passes and the id is looked up (there is no such artifact)
    r = http.post("/artifacts", json={**body, "derived_from": [parent, "p" * limit]})
    assert only_error(r)["type"] == "artifact_not_found"


@pytest.mark.parametrize("transport", ["json", "form"])
def test_derived_from_count(http: httpx.Client, transport: str) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_DERIVED_FROM"])
    parents = [new_artifact(http) for _ in range(limit + 1)]

    def send(ids: list[str]) -> httpx.Response:
        if transport == "json":
            return http.post(
                "/artifacts", json={**CREATE_FIELDS, "content": "c", "derived_from": ids}
            )
        form = create_form(derived_from=json.dumps(ids))
        return http.post("/artifacts", content=form, headers=dict(FORM))

    r = send(parents[:limit])
    assert r.status_code == 201, r.text
    assert http.get(f"/artifacts/{r.json()['id']}").json()["derived_from"] == parents[:limit]
    item = only_error(send(parents))
    assert item == {
        "type": "too_long",
        "loc": ["body", "derived_from"],
        "msg": f"List should have at most {limit} items after validation, not {limit + 1}",
        "input": parents,
        "ctx": {"field_type": "List", "max_length": limit, "actual_length": limit + 1},
    }


def test_multipart_part_count(http: httpx.Client) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_FORM_PARTS"])
    aid = new_artifact(http)
    fields = [form_field(f"extra{i}", "v") for i in range(limit - 1)]
    at_limit = b"".join(fields) + file_part() + END  # limit - 1 fields and the file
    r = http.post(f"/artifacts/{aid}/upload", content=at_limit, headers=dict(FORM))
    assert r.status_code == 200, r.text
    over = form_field("one_more", "v") + at_limit
    r = http.post(f"/artifacts/{aid}/upload", content=over, headers=dict(FORM))
    detail = problem(r, 413, "payload_too_large", limit)
    assert detail == f"The multipart body has more parts than the limit of {limit}."


def test_multipart_part_header_size(http: httpx.Client) -> None:
    """A part's header block counts each line's name, colon, value and CRLF (a space after the
    colon is skipped by the parser, so these lines have none: the count is the raw size)."""
    limit = int(TIGHT["ARTIFACTS_MAX_PART_HEADER_BYTES"])
    aid = new_artifact(http)

    def upload(header_bytes: int) -> httpx.Response:
        lines = ['Content-Disposition:form-data; name="file"; filename="f.bin"', "X-Pad:"]
        pad = header_bytes - sum(len(line) + 2 for line in lines)
        lines[1] += "p" * pad
        assert sum(len(line) + 2 for line in lines) == header_bytes
        body = part(lines, b"data") + END
        return http.post(f"/artifacts/{aid}/upload", content=body, headers=dict(FORM))

    assert upload(limit).status_code == 200
    detail = problem(upload(limit + 1), 413, "payload_too_large", limit)
    assert detail == f"A multipart part's headers are larger than the limit of {limit} bytes."


@pytest.mark.parametrize("route", ["create", "upload"])
def test_form_fields_size(http: httpx.Client, route: str) -> None:
    """Every non-file part's data counts, a field we use, one we ignore, or a nameless part."""
    limit = int(TIGHT["ARTIFACTS_MAX_FORM_FIELDS_BYTES"])
    if route == "create":
        target = "/artifacts"
        used = sum(len(v) for v in CREATE_FIELDS.values())
        rest = limit - used
        at_limit = create_form(
            part(["X-Nameless: yes"], "n" * (rest - 2 - 1000)),
            part(['Content-Disposition: form-data; name="nothing"'], "z" * 1000),
            metadata="{}",
        )
        over = create_form(
            part(["X-Nameless: yes"], "n" * (rest - 2 - 1000)),
            part(['Content-Disposition: form-data; name="nothing"'], "z" * 1001),
            metadata="{}",
        )
    else:
        target = f"/artifacts/{new_artifact(http)}/upload"
        at_limit = form_field("ignored", "v" * (limit - 10)) + part([], "w" * 10)
        at_limit += file_part() + END
        over = form_field("ignored", "v" * limit) + part([], "w") + file_part() + END
    r = http.post(target, content=at_limit, headers=dict(FORM))
    # the create refuses the unknown field (422) only once it has been read within the limit
    assert r.status_code == (422 if route == "create" else 200), r.text
    r = http.post(target, content=over, headers=dict(FORM))
    detail = problem(r, 413, "payload_too_large", limit)
    assert detail == (
        f"The form fields are larger than the limit of {limit} bytes (all non-file parts together)."
    )


@pytest.mark.parametrize("route", ["create", "upload", "raw"])
def test_upload_size(http: httpx.Client, route: str) -> None:
    limit = int(TIGHT["ARTIFACTS_MAX_UPLOAD_BYTES"])
    aid = new_artifact(http)

    def send(data: bytes) -> httpx.Response:
        if route == "raw":
            return http.post(f"/artifacts/{aid}/upload", content=data)
        if route == "create":
            return http.post(
                "/artifacts", content=create_form(file=file_part(data)), headers=dict(FORM)
            )
        body = file_part(data) + END
        return http.post(f"/artifacts/{aid}/upload", content=body, headers=dict(FORM))

    assert send(b"u" * limit).status_code in (200, 201)
    detail = problem(send(b"u" * (limit + 1)), 413, "payload_too_large", limit)
    assert detail == f"The upload is larger than the limit of {limit} bytes."


def test_multipart_boundary_length(http: httpx.Client) -> None:
    """RFC 2046: 1 to 70 characters."""
    aid = new_artifact(http)
    for boundary, status in (("b" * 70, 200), ("b" * 71, 400)):
        body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        body += f"x\r\n--{boundary}--\r\n"
        r = http.post(
            f"/artifacts/{aid}/upload",
            content=body.encode(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == status, r.text
    detail = problem(r, 400, "malformed_multipart", 70)
    assert detail == "A multipart boundary may be at most 70 characters (RFC 2046), not 71."


@pytest.mark.parametrize("where", ["before", "after"])
def test_multipart_envelope_edges(tight: Server, http: httpx.Client, where: str) -> None:
    """CR/LF before the first boundary and an epilogue after the closing one are allowed, up to
    the part-header limit (counted per chunk read, as the parser skips them unseen)."""
    limit = int(TIGHT["ARTIFACTS_MAX_PART_HEADER_BYTES"])
    aid = new_artifact(http)
    body = file_part(b"edge") + END

    def send(junk: bytes) -> rawhttp.RawResponse:
        pieces = [junk, body] if where == "before" else [body, junk]
        return rawhttp.request(
            tight.url, "POST", f"/artifacts/{aid}/upload", FORM, pieces, pause=0.05
        )

    assert send(b"\r\n" * (limit // 2)).status == 200
    r = send(b"\r\n" * (limit // 2) + b"\n")
    detail = problem(r, 400, "malformed_multipart", limit)
    word = "before its first" if where == "before" else "after its closing"
    assert detail == f"The multipart body has more than the limit of {limit} bytes {word} boundary."


# -- the body idle timeout ---------------------------------------------------------------------


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


@pytest.mark.parametrize("case", list(STALLS))
def test_body_idle_timeout(tight: Server, http: httpx.Client, case: str) -> None:
    idle = float(TIGHT["ARTIFACTS_BODY_IDLE_TIMEOUT"])
    method, target, headers, cut = STALLS[case]
    aid = new_artifact(http, content="kept")
    target = target.format(aid=aid)
    if headers is FORM:
        body = create_form(file=file_part(b"f" * 4000)) if "create" in case else file_part() + END
    else:
        body = json.dumps({**CREATE_FIELDS, "content": "c" * 1000}).encode()
        if method == "PUT":
            body = json.dumps({"title": "never"}).encode()
    sent = cut % len(body) if cut is not None else len(body) // 2
    r, waited, closed = trickle(tight.url, method, target, headers, body, sent, idle)
    detail = problem(r, 408, "request_timeout", idle)
    assert detail == (
        f"No byte of the request body arrived for {idle:g} seconds (the limit); nothing was stored."
    )
    assert idle * 0.9 <= waited < idle + 2, waited
    assert r.header("connection") == "close" and closed
    got = http.get(f"/artifacts/{aid}").json()
    assert (got["content"], got["title"]) == ("kept", "t")


def test_a_client_slower_than_usual_but_within_the_idle_timeout_is_served(tight: Server) -> None:
    idle = float(TIGHT["ARTIFACTS_BODY_IDLE_TIMEOUT"])
    body = create_form(file=file_part(b"slow but steady"))
    pieces = [body[i : i + 80] for i in range(0, len(body), 80)][:6]
    pieces.append(body[80 * 6 :])
    started = time.monotonic()
    r = rawhttp.request(tight.url, "POST", "/artifacts", FORM, pieces, pause=idle * 0.6)
    assert r.status == 201, r.body
    assert time.monotonic() - started > idle * 3  # the body took several idle timeouts


# -- the hostile inputs, at the default limits ----------------------------------------------------


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


@pytest.fixture(scope="module")
def target(hostile: Server) -> str:
    with hostile.client() as client:
        return f"/artifacts/{new_artifact(client)}/upload"


@pytest.mark.slow
def test_1001_parts(hostile: Server) -> None:
    body = b"".join(form_field(f"f{i}", "v") for i in range(1000)) + file_part() + END
    r, _ = attack(
        hostile, "/artifacts", FORM, [body[i : i + 4096] for i in range(0, len(body), 4096)]
    )
    problem(r, 413, "payload_too_large", DEFAULTS.max_form_parts)


@pytest.mark.slow
def test_50_mib_form_field(hostile: Server) -> None:
    head = f'--{B}\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'.encode()
    size = 50 * MiB
    pieces = [head, *repeat(b"{", size)]
    r, _ = attack(hostile, "/artifacts", FORM, pieces, total=len(head) + size)
    problem(r, 413, "payload_too_large", DEFAULTS.max_form_fields_bytes)


@pytest.mark.slow
def test_1_mib_part_header(hostile: Server, target: str) -> None:
    head = f'--{B}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
    pieces = [head, *repeat(b"h", MiB, 16 * KiB), b'"\r\n\r\nx\r\n', END]
    r, _ = attack(hostile, target, FORM, pieces, total=sum(len(p) for p in pieces))
    problem(r, 413, "payload_too_large", DEFAULTS.max_part_header_bytes)


@pytest.mark.slow
def test_many_headers_of_semicolons_and_quotes(hostile: Server, target: str) -> None:
    """Part headers just under the limit made of what parameter parsers loop on: each is parsed
    in bounded time, and the part limit ends the body."""
    nasty = 'Content-Disposition: form-data; name="x' + '\\";' * 1500 + ";" * 6000
    quotes = "X-Quotes: " + '"' * 3000
    parts = [part([nasty, quotes], "v") for _ in range(DEFAULTS.max_form_parts)]
    body = b"".join(parts) + file_part() + END
    r, _ = attack(
        hostile, target, FORM, [body[i : i + 64 * KiB] for i in range(0, len(body), 64 * KiB)]
    )
    problem(r, 413, "payload_too_large", DEFAULTS.max_form_parts)


BOUNDARIES = {  # Content-Type parameters; True: the boundary is too long (else: no such body)
    "71 characters": ("b" * 71, True),
    "8,000 characters": ("b" * 8000, True),
    "quotes and backslashes": ('"' + '\\"' * 3000 + '"', True),
    "an unclosed quote": ('"' + "a;" * 3000, True),
    "semicolons after it": ("x" + ";" * 6000, False),
    "70 characters of hyphens": ("-" * 70, False),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOUNDARIES))
def test_pathological_boundary(hostile: Server, target: str, name: str) -> None:
    boundary, too_long = BOUNDARIES[name]
    headers = [("Content-Type", f"multipart/form-data; boundary={boundary}; a=b")]
    r, _ = attack(hostile, target, headers, [b"--x\r\n" * 1000], total=5000)
    assert r.status == 400 and r.json()["code"] == "malformed_multipart", r.body
    if too_long:
        problem(r, 400, "malformed_multipart", 70)


JUNK = {
    "CR/LF before the first boundary": (b"\r\n", True),
    "a CR then no hyphen for megabytes": (b"\rjunk-free", True),
    "junk before the first boundary": (b"garbage!", True),
    "CR/LF after the closing boundary": (b"\r\n", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(JUNK))
def test_megabytes_of_junk_around_the_boundaries(hostile: Server, target: str, name: str) -> None:
    piece, before = JUNK[name]
    if name.startswith("a CR"):
        junk = [b"\r", *repeat(b"junkjunk", 8 * MiB)]
    else:
        junk = list(repeat(piece, 8 * MiB))
    body = file_part(b"data") + END
    pieces = [*junk, body] if before else [body, *junk]
    r, _ = attack(hostile, target, FORM, pieces)
    assert r.status == 400 and r.json()["code"] == "malformed_multipart", r.body
    if name != "junk before the first boundary":  # that one is malformed at its first byte
        problem(r, 400, "malformed_multipart", DEFAULTS.max_part_header_bytes)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["json", "form", "raw"])
def test_slow_loris(hostile: Server, target: str, route: str) -> None:
    """A client sending a byte less often than the idle timeout is answered 408 one timeout
    after its last byte, while other clients are served."""
    if route == "json":
        path, headers, body = "/artifacts", JSON, json.dumps({**CREATE_FIELDS, "content": "c"})
    elif route == "form":
        path, headers, body = target, FORM, (file_part(b"x" * 100) + END).decode()
    else:
        path, headers, body = target, [("Content-Type", "text/plain")], "r" * 100
    raw = body.encode()
    with Monitor(hostile).watching(), rawhttp.Connection(hostile.url) as conn:
        conn.start("POST", path, headers, content_length=len(raw))
        for byte in raw[:4]:
            assert not conn.answered(HOSTILE_IDLE * 0.6)  # a byte within the timeout: waited for
            conn.send(bytes([byte]))
            last = time.monotonic()
        r = conn.response(timeout=HOSTILE_IDLE + 5)  # then nothing more
        waited = time.monotonic() - last
    problem(r, 408, "request_timeout", HOSTILE_IDLE)
    assert HOSTILE_IDLE * 0.9 <= waited < HOSTILE_IDLE + 2, waited


def test_the_server_still_works_after_the_attacks(hostile: Server) -> None:
    with hostile.client() as client:
        aid = new_artifact(client, content="after")
        assert client.get(f"/artifacts/{aid}").json()["content"] == "after"
    assert list((hostile.data_dir / "blobs" / "tmp").iterdir()) == []
