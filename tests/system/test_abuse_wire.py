"""Hostile input over sockets, against real servers: limits shown with bodies sent in exact pieces,
a clear 413/400/408 that states the number, quickly, with bounded server memory, while the server
keeps serving.

Two real servers (SQLite, module-scoped): `tight` has every limit set small so that each one can
be shown exactly at and just past its number; `hostile` keeps the default limits (only the body
idle timeout is short) and takes the denial-of-service inputs: a 1,001-part body, a 50 MiB form
field, a 1 MiB part header, pathological boundaries, megabytes of CR/LF around the boundaries,
and a client trickling its body. During each attack another thread probes GET /healthz and
samples the server's VmRSS from /proc. The limits that need no socket: tests/test_abuse.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import rawhttp
from tests.support.abuse import (
    BOUNDARIES,
    CREATE_FIELDS,
    DEFAULTS,
    END,
    FORM,
    HOSTILE_IDLE,
    JSON,
    JUNK,
    STALLS,
    TIGHT,
    B,
    KiB,
    MiB,
    Monitor,
    attack,
    create_form,
    file_part,
    form_field,
    json_of_size,
    new_artifact,
    part,
    post_json_bytes,
    problem,
    repeat,
    stopped_cleanly,
    trickle,
)
from tests.support.servers import Server, start_server


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with stopped_cleanly(start_server(tmp_path_factory.mktemp("tight") / "data", env=TIGHT)) as s:
        yield s


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"ARTIFACTS_BODY_IDLE_TIMEOUT": str(HOSTILE_IDLE)}
    with stopped_cleanly(start_server(tmp_path_factory.mktemp("hostile") / "data", env=env)) as s:
        yield s


@pytest.fixture(scope="module")
def http(tight: Server) -> Iterator[httpx.Client]:
    with tight.client() as client:
        yield client


@pytest.fixture(scope="module")
def target(hostile: Server) -> str:
    with hostile.client() as client:
        return f"/artifacts/{new_artifact(client)}/upload"


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


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOUNDARIES))
def test_pathological_boundary(hostile: Server, target: str, name: str) -> None:
    boundary, too_long = BOUNDARIES[name]
    headers = [("Content-Type", f"multipart/form-data; boundary={boundary}; a=b")]
    r, _ = attack(hostile, target, headers, [b"--x\r\n" * 1000], total=5000)
    assert r.status == 400 and r.json()["code"] == "malformed_multipart", r.body
    if too_long:
        problem(r, 400, "malformed_multipart", 70)


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
