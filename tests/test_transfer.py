"""Exact bytes in and out: uploads (raw and multipart, any chunking), downloads (Range, ETag,
If-Range, HEAD), text vs binary, declared digests, limits, malformed bodies, concurrent
identical uploads, hostile filenames and bounded server memory.

Everything runs against real `artifacts serve` processes on 127.0.0.1. Servers are
module-scoped (one per backend) so the property tests stay fast; every check of "nothing was
stored" compares before/after snapshots of the blob directory and the blob/artifact rows.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from storage.db.engine import sqlite_url
from storage.digest import blob_relpath
from tests import rawhttp
from tests.conftest import (
    BACKENDS,
    POSTGRES_URL,
    Server,
    _create_pg_database,
    _drop_pg_database,
    count_rows,
    start_server,
)

MiB = 1 << 20
LIMIT = 1 * MiB  # ARTIFACTS_MAX_UPLOAD_BYTES of the `limited` servers
BOUNDARY = "transfer-7f3a9c0e5b1d4e2a8c6f"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
CREATE_FIELDS = (("workflow_id", "wf-transfer"), ("artifact_type", "text"), ("title", "t"))
INCOMPLETE = {
    "detail": "The multipart body ended before its closing boundary; nothing was stored.",
    "code": "incomplete_body",
}
MISSING_FILE = {
    "detail": [{"type": "missing", "loc": ["body", "file"], "msg": "Field required", "input": None}]
}

PROPERTY_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Live:
    server: Server
    database_url: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def blobs(self) -> Path:
        return self.server.data_dir / "blobs"


@contextmanager
def running(root: Path, backend: str, env: dict[str, str] | None = None) -> Iterator[Live]:
    """A server on a fresh database (the server migrates it at start)."""
    if backend == "sqlite":
        url = sqlite_url(root / "artifacts.db")
        drop = None
    else:
        assert POSTGRES_URL
        url = _create_pg_database(POSTGRES_URL)
        drop = url
    server = start_server(root / "data", database_url=url, env=env)
    try:
        yield Live(server, url)
    finally:
        server.stop()
        if drop is not None:
            _drop_pg_database(POSTGRES_URL or "", drop)


@pytest.fixture(scope="module", params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with running(tmp_path_factory.mktemp("live"), request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(live: Live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module", params=BACKENDS)
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    env = {"ARTIFACTS_MAX_UPLOAD_BYTES": str(LIMIT)}
    with running(tmp_path_factory.mktemp("limited"), request.param, env) as srv:
        yield srv


# -- helpers ---------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64_digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def new_artifact(client: httpx.Client, content: str = "seed", **fields: Any) -> str:
    body = {"workflow_id": "wf-transfer", "artifact_type": "text", "title": "t", **fields}
    r = client.post("/artifacts", json={**body, "content": content})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def field_part(name: str, value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + raw


def file_part(
    data: bytes,
    filename: bytes | str | None = "f.bin",
    content_type: str | None = "application/octet-stream",
    name: str = "file",
) -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
    if filename is not None:
        raw = filename.encode() if isinstance(filename, str) else filename
        disposition += b'; filename="' + raw + b'"'
    lines = [disposition]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + data


def multipart(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    mark = f"--{boundary}".encode()
    return b"".join(mark + b"\r\n" + p + b"\r\n" for p in parts) + mark + b"--\r\n"


def create_form(data: bytes, *extra: bytes, **file: Any) -> bytes:
    fields = [field_part(k, v) for k, v in CREATE_FIELDS]
    return multipart(*fields, *extra, file_part(data, **file))


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


def blob_files(live: Live) -> set[str]:
    root = live.blobs / "sha256"
    return {p.relative_to(live.blobs).as_posix() for p in root.rglob("*") if p.is_file()}


def staging(live: Live) -> list[str]:
    return sorted(p.name for p in (live.blobs / "tmp").iterdir())


@dataclass(frozen=True)
class Snapshot:
    blob_files: frozenset[str]
    blob_rows: int
    artifact_rows: int


def snapshot(live: Live) -> Snapshot:
    return Snapshot(
        frozenset(blob_files(live)),
        count_rows(live.database_url, "blobs"),
        count_rows(live.database_url, "artifacts"),
    )


def assert_nothing_stored(live: Live, before: Snapshot) -> None:
    assert staging(live) == []
    assert snapshot(live) == before


def record(client: httpx.Client, artifact_id: str) -> dict[str, Any]:
    r = client.get(f"/artifacts/{artifact_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def download_headers(data: bytes, content_type: str) -> dict[str, str]:
    """What every full (200) download of `data` must carry."""
    return {
        "content-length": str(len(data)),
        "etag": f'"{sha(data)}"',
        "repr-digest": f"sha-256=:{b64_digest(data)}:",
        "accept-ranges": "bytes",
        "x-content-type-options": "nosniff",
        "content-security-policy": "sandbox",
        "content-type": content_type,
    }


def assert_download(
    client: httpx.Client, live: Live, artifact_id: str, data: bytes, content_type: str
) -> None:
    """GET gives exactly `data` with the full header set; HEAD the same headers, no body; the
    blob file on disk holds exactly the bytes."""
    r = client.get(f"/artifacts/{artifact_id}/download")
    assert r.status_code == 200
    assert r.content == data
    for name, value in download_headers(data, content_type).items():
        assert r.headers.get(name) == value, name
    assert r.headers.get_list("content-type") == [content_type]
    h = client.head(f"/artifacts/{artifact_id}/download")
    assert h.status_code == 200
    assert h.content == b""
    assert without_date(h.headers) == without_date(r.headers)
    assert (live.blobs / blob_relpath(sha(data))).read_bytes() == data


def without_date(headers: httpx.Headers) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in headers.multi_items() if k not in ("date", "server"))


def send_upload(
    live: Live,
    client: httpx.Client,
    target: str,
    headers: dict[str, str],
    pieces: list[bytes],
    transport: str,
) -> tuple[int, Any]:
    """Send `pieces` as a chunked body through httpx (one HTTP chunk per piece) or over a raw
    socket with Content-Length, pausing so the server reads each piece on its own."""
    if transport == "chunked":

        def gen() -> Iterator[bytes]:
            yield from pieces

        r = client.post(target, headers=headers, content=gen())
        assert r.headers.get("content-type") == "application/json"
        return r.status_code, r.json()
    resp = rawhttp.request(live.url, "POST", target, list(headers.items()), pieces, pause=0.002)
    return resp.status, resp.json()


# -- strategies ------------------------------------------------------------------------------


def _random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


payloads = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=1),
    st.binary(max_size=4096),
    st.text(max_size=500).map(str.encode),  # valid UTF-8
    st.tuples(
        st.text(max_size=200).map(str.encode),
        st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80", b"\xf0\x9f\x98"]),
    ).map(lambda t: t[0] + t[1]),  # invalid UTF-8 (a bad or truncated sequence at the end)
    st.lists(
        st.sampled_from(
            [b"\r\n", b"--", b"\r", b"\n", b"-", f"--{BOUNDARY}"[:-1].encode(), b"x", b"\x00"]
        ),
        max_size=40,
    ).map(b"".join),  # near-boundaries that the multipart parser must pass through
    st.builds(_random_bytes, st.integers(0, 2**32), st.integers(1 * MiB, 3 * MiB)),
)

# (content type as sent, whether valid UTF-8 under it is served as `content` text)
CONTENT_TYPES = [
    ("application/octet-stream", False),
    ("text/plain;charset=UTF-8", True),
    ("Text/Markdown", True),
    ("image/png", False),
    ('application/vnd.example+json; v="2"', True),
    ("application/pdf", False),
]


def expected_content(data: bytes, textual: bool) -> str | None:
    if not textual:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- round trips (property) ------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    data=payloads,
    mode=st.sampled_from(["raw", "multipart"]),
    ctype=st.sampled_from(CONTENT_TYPES),
    cuts=st.lists(st.integers(0, 2**31), max_size=6),
    transport=st.sampled_from(["chunked", "socket"]),
)
@example(data=b"", mode="raw", ctype=CONTENT_TYPES[1], cuts=[], transport="chunked")
@example(data=b"", mode="multipart", ctype=CONTENT_TYPES[1], cuts=[3], transport="socket")
@example(data=b"\x00", mode="raw", ctype=CONTENT_TYPES[0], cuts=[0, 1], transport="socket")
@example(data=b"\xff", mode="multipart", ctype=CONTENT_TYPES[2], cuts=[1], transport="chunked")
@example(
    data=_random_bytes(9, 3 * MiB + 1) + b"\xc3",
    mode="multipart",
    ctype=CONTENT_TYPES[1],
    cuts=[100, MiB, 2 * MiB + 7],
    transport="chunked",
)
@example(
    data="é".encode() * MiB,
    mode="raw",
    ctype=CONTENT_TYPES[2],
    cuts=[1, MiB + 1],  # splits a two-byte character
    transport="socket",
)
def test_upload_then_download_is_exact(
    live: Live,
    http: httpx.Client,
    data: bytes,
    mode: str,
    ctype: tuple[str, bool],
    cuts: list[int],
    transport: str,
) -> None:
    content_type, textual = ctype
    aid = new_artifact(http)
    if mode == "raw":
        target = f"/artifacts/{aid}/upload?filename=payload.bin"
        body = data
        headers = {"Content-Type": content_type}
    else:
        target = f"/artifacts/{aid}/upload"
        body = multipart(file_part(data, "payload.bin", content_type))
        headers = {"Content-Type": FORM_TYPE}
    status, answer = send_upload(live, http, target, headers, split(body, cuts), transport)
    assert status == 200, answer
    assert answer == {
        "artifact_id": aid,
        "storage_url": f"{live.url}/artifacts/{aid}/download",
        "status": "uploaded",
        "content_hash": sha(data),
        "size_bytes": len(data),
        "content_type": content_type,
    }
    got = record(http, aid)
    assert got["content_hash"] == sha(data)
    assert got["size_bytes"] == len(data)
    assert got["content_type"] == content_type
    assert got["filename"] == "payload.bin"
    assert got["content"] == expected_content(data, textual)
    assert got["download_url"] == f"{live.url}/artifacts/{aid}/download"
    assert_download(http, live, aid, data, content_type)


near_boundaries = st.lists(
    st.one_of(
        st.sampled_from(
            [b"\r\n", b"\r\n--", b"\r", b"\n", b"-", f"\r\n--{BOUNDARY}"[:-1].encode()]
        ),
        st.builds(lambda n: f"\r\n--{BOUNDARY}"[:n].encode(), st.integers(1, len(BOUNDARY) + 3)),
        st.binary(min_size=1, max_size=20),
    ),
    max_size=30,
).map(b"".join)


@settings(PROPERTY_SETTINGS, max_examples=40)
@given(
    data=near_boundaries,
    route=st.sampled_from(["upload", "create"]),
    cuts=st.lists(st.integers(0, 2**31), min_size=1, max_size=12),
)
def test_multipart_framing_is_exact(
    live: Live, http: httpx.Client, data: bytes, route: str, cuts: list[int]
) -> None:
    """The file part's bytes come out exactly, whatever prefixes of the delimiter they hold and
    wherever the body is split between reads."""
    if route == "create":
        target, body = "/artifacts", create_form(data)
    else:
        target, body = f"/artifacts/{new_artifact(http)}/upload", multipart(file_part(data))
    r = rawhttp.request(
        live.url, "POST", target, [("Content-Type", FORM_TYPE)], split(body, cuts), pause=0.001
    )
    assert r.status == (201 if route == "create" else 200), r.body
    aid = r.json()["id" if route == "create" else "artifact_id"]
    assert (r.json()["content_hash"], r.json()["size_bytes"]) == (sha(data), len(data))
    assert http.get(f"/artifacts/{aid}/download").content == data


@PROPERTY_SETTINGS
@given(
    text=st.text(min_size=1, max_size=2000),
    content_type=st.sampled_from(["text/markdown", "text/plain", "application/json"]),
)
def test_json_created_text_round_trips(
    live: Live, http: httpx.Client, text: str, content_type: str
) -> None:
    raw = text.encode("utf-8")
    aid = new_artifact(http, text, content_type=content_type)
    got = record(http, aid)
    assert (got["content"], got["content_hash"], got["size_bytes"]) == (text, sha(raw), len(raw))
    content = http.get(f"/artifacts/{aid}/content").json()
    assert content["content"] == text
    assert_download(http, live, aid, raw, content_type)


# -- ranges and conditional requests (property) ----------------------------------------------

RANGE_SIZES = (0, 1, 7, 1000, 2 * MiB + 3)


@pytest.fixture(scope="module")
def ranged(live: Live, http: httpx.Client) -> dict[int, tuple[str, bytes]]:
    """One artifact per size, bytes random, Content-Type with parameters to check it is kept."""
    out = {}
    for size in RANGE_SIZES:
        data = _random_bytes(size, size)
        aid = new_artifact(http)
        r = http.post(
            f"/artifacts/{aid}/upload", content=data, headers={"Content-Type": "x/y; q=1"}
        )
        assert r.status_code == 200, r.text
        out[size] = (aid, data)
    return out


@st.composite
def range_case(draw: st.DrawFn, size: int) -> tuple[str, int, tuple[int, int] | None]:
    """(Range header, expected status, (start, end inclusive) for a 206)."""
    kinds = ["unsatisfiable", "suffix0", "multi", "other-unit"]
    if size:
        kinds += ["a-b", "a-", "-n"]
    if size >= 2:
        kinds.append("reversed")
    kind = draw(st.sampled_from(kinds))
    if kind == "a-b":
        a = draw(st.integers(0, size - 1))
        b = draw(st.integers(a, size + 10))
        return f"bytes={a}-{b}", 206, (a, min(b, size - 1))
    if kind == "a-":
        a = draw(st.integers(0, size - 1))
        return f"bytes={a}-", 206, (a, size - 1)
    if kind == "-n":
        n = draw(st.integers(1, size + 10))
        return f"bytes=-{n}", 206, (max(size - n, 0), size - 1)
    if kind == "unsatisfiable":
        a = draw(st.integers(size, size + 100))
        b = draw(st.integers(a, a + 100))
        header = draw(st.sampled_from([f"bytes={a}-", f"bytes={a}-{b}"]))
        return header, 416, None
    if kind == "suffix0":
        return ("bytes=-0" if size else f"bytes=-{draw(st.integers(1, 10))}"), 416, None
    if kind == "multi":
        return "bytes=0-0,2-3", 200, None
    if kind == "reversed":  # last < first: invalid, ignored
        a = draw(st.integers(1, size - 1))
        return f"bytes={a}-{a - 1}", 200, None
    return "items=0-1", 200, None


@PROPERTY_SETTINGS
@given(data=st.data(), size=st.sampled_from(RANGE_SIZES), method=st.sampled_from(["GET", "HEAD"]))
def test_range_requests(
    ranged: dict[int, tuple[str, bytes]],
    http: httpx.Client,
    data: st.DataObject,
    size: int,
    method: str,
) -> None:
    aid, body = ranged[size]
    header, status, span = data.draw(range_case(size))
    url = f"/artifacts/{aid}/download"
    r = http.request(method, url, headers={"Range": header})
    assert r.status_code == status, (header, r.status_code)
    assert r.headers["etag"] == f'"{sha(body)}"'
    assert r.headers["repr-digest"] == f"sha-256=:{b64_digest(body)}:"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox"
    if status == 416:
        assert r.headers["content-range"] == f"bytes */{size}"
        assert r.content == b""
        return
    if status == 200:
        assert "content-range" not in r.headers
        expected = body
    else:
        assert span is not None
        start, end = span
        assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
        expected = body[start : end + 1]
    assert r.headers["content-type"] == "x/y; q=1"
    assert r.headers["content-length"] == str(len(expected))
    assert r.content == (b"" if method == "HEAD" else expected)
    if method == "HEAD":
        g = http.get(url, headers={"Range": header})
        assert without_date(g.headers) == without_date(r.headers)
        assert g.content == expected


@PROPERTY_SETTINGS
@given(
    size=st.sampled_from([s for s in RANGE_SIZES if s]),
    data=st.data(),
    method=st.sampled_from(["GET", "HEAD"]),
)
def test_if_range_and_if_none_match(
    ranged: dict[int, tuple[str, bytes]],
    http: httpx.Client,
    size: int,
    data: st.DataObject,
    method: str,
) -> None:
    aid, body = ranged[size]
    etag = f'"{sha(body)}"'
    url = f"/artifacts/{aid}/download"
    a = data.draw(st.integers(0, size - 1))
    b = data.draw(st.integers(a, size - 1))
    part = body[a : b + 1]

    def check(r: httpx.Response, status: int, expected: bytes) -> None:
        assert r.status_code == status
        assert r.headers["content-length"] == str(len(expected))
        assert r.content == (b"" if method == "HEAD" else expected)

    # If-Range with the right (strong) ETag honours the range
    r = http.request(method, url, headers={"Range": f"bytes={a}-{b}", "If-Range": etag})
    check(r, 206, part)
    assert r.headers["content-range"] == f"bytes {a}-{b}/{size}"
    # with a wrong, weak or date validator: the whole representation, 200
    wrong = data.draw(
        st.sampled_from(
            [f'"{sha(body + b"x")}"', f"W/{etag}", "Wed, 21 Oct 2015 07:28:00 GMT", '"nope"']
        )
    )
    r = http.request(method, url, headers={"Range": f"bytes={a}-{b}", "If-Range": wrong})
    check(r, 200, body)
    assert "content-range" not in r.headers
    # If-None-Match with the ETag (also weakly, in a list, or *) -> 304 without a body
    matching = data.draw(st.sampled_from([etag, f"W/{etag}", f'"other", {etag}', "*"]))
    r = http.request(method, url, headers={"If-None-Match": matching, "Range": f"bytes={a}-{b}"})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == etag
    assert "content-range" not in r.headers
    # a non-matching If-None-Match: served normally
    r = http.request(method, url, headers={"If-None-Match": f'"{sha(b"other")}"'})
    check(r, 200, body)


# -- text vs binary ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "data", "text"),
    [
        ("text/plain; charset=utf-8", "naïve ☕\n".encode(), "naïve ☕\n"),
        ("text/csv", b"a,b\n1,2\n", "a,b\n1,2\n"),
        ("application/json", b'{"k": [1, 2]}', '{"k": [1, 2]}'),
        ("text/plain", b"", ""),
        ("text/plain", b"abc\xff\xfe", None),  # invalid UTF-8
        ("text/plain", b"\xed\xa0\x80", None),  # an encoded surrogate is not UTF-8
        ("application/octet-stream", b"plain ascii", None),  # non-textual type
        ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00", None),
    ],
)
@pytest.mark.parametrize("mode", ["raw", "multipart"])
def test_text_or_binary(
    live: Live, http: httpx.Client, content_type: str, data: bytes, text: str | None, mode: str
) -> None:
    aid = new_artifact(http)
    if mode == "raw":
        r = http.post(
            f"/artifacts/{aid}/upload", content=data, headers={"Content-Type": content_type}
        )
    else:
        r = http.post(
            f"/artifacts/{aid}/upload",
            content=multipart(file_part(data, "x", content_type)),
            headers={"Content-Type": FORM_TYPE},
        )
    assert r.status_code == 200, r.text
    got = record(http, aid)
    assert got["content"] == text
    download_url = f"{live.url}/artifacts/{aid}/download"
    assert got["download_url"] == download_url
    content = http.get(f"/artifacts/{aid}/content").json()
    assert content == {
        "artifact_id": aid,
        "content": text,
        "content_type": content_type,
        "size_bytes": len(data),
        "content_hash": sha(data),
        "download_url": download_url,
    }
    downloaded = httpx.get(download_url)
    assert downloaded.content == data
    assert downloaded.headers["content-type"] == content_type


def test_json_created_content_is_text(live: Live, http: httpx.Client) -> None:
    text = "# Título\n\nnaïve café ☕ \x00 end"
    aid = new_artifact(http, text)
    got = record(http, aid)
    assert got["content"] == text
    assert got["content_type"] == "text/markdown"
    assert got["content_hash"] == sha(text.encode())
    assert httpx.get(got["download_url"]).content == text.encode()


# -- multipart create --------------------------------------------------------------------------


def test_multipart_create_stores_the_file(live: Live, http: httpx.Client) -> None:
    parent = new_artifact(http, "parent")
    data = _random_bytes(1, 300_000)
    body = multipart(
        field_part("workflow_id", "wf-form"),
        field_part("phase_id", "ph-1"),
        field_part("session_id", "sess-9"),
        field_part("artifact_type", "Analysis_Report"),
        field_part("title", "Rapport d'été"),
        field_part("is_primary_deliverable", "true"),
        field_part("created_by", "agent-7"),
        field_part("metadata", json.dumps({"k": [1, "é"], "n": None})),
        field_part("derived_from", json.dumps([parent])),
        file_part(data, "../../reports/rapport été.pdf", "application/pdf"),
    )
    before = count_rows(live.database_url, "artifacts")
    pieces = split(body, [100, 101, 5000, 150_000])
    r = rawhttp.request(
        live.url, "POST", "/artifacts", [("Content-Type", FORM_TYPE)], pieces, pause=0.002
    )
    assert r.status == 201, r.body
    created = r.json()
    aid = created["id"]
    assert r.header("location") == f"{live.url}/artifacts/{aid}"
    assert created == {
        "id": aid,
        "title": "Rapport d'été",
        "artifact_type": "analysis_report",
        "status": "created",
        "content_hash": sha(data),
        "size_bytes": len(data),
        "created_at": created["created_at"],
    }
    got = record(http, aid)
    assert {k: v for k, v in got.items() if k not in ("id", "created_at", "updated_at")} == {
        "workflow_id": "wf-form",
        "phase_id": "ph-1",
        "session_id": "sess-9",
        "artifact_type": "analysis_report",
        "is_primary_deliverable": True,
        "content": None,
        "content_type": "application/pdf",
        "content_hash": sha(data),
        "size_bytes": len(data),
        "title": "Rapport d'été",
        "derived_from": [parent],
        "created_by": "agent-7",
        "metadata": {"k": [1, "é"], "n": None},
        "filename": "rapport été.pdf",
        "download_url": f"{live.url}/artifacts/{aid}/download",
    }
    assert count_rows(live.database_url, "artifacts") == before + 1
    assert_download(http, live, aid, data, "application/pdf")


def test_multipart_create_content_type_field_wins(live: Live, http: httpx.Client) -> None:
    data = "line one\nligne deux é\n".encode()
    body = create_form(
        data, field_part("content_type", "text/x-log"), content_type="application/octet-stream"
    )
    r = http.post("/artifacts", content=body, headers={"Content-Type": FORM_TYPE})
    assert r.status_code == 201, r.text
    got = record(http, r.json()["id"])
    assert got["content_type"] == "text/x-log"
    assert got["content"] == data.decode()
    assert got["filename"] == "f.bin"


def test_multipart_create_with_httpx_files(live: Live, http: httpx.Client) -> None:
    """The ordinary client encoding (fields first, then `files=`) works as is."""
    data = b"\x00\x01binary\xff" * 1000
    r = http.post(
        "/artifacts",
        data={"workflow_id": "wf", "artifact_type": "code", "title": "bin"},
        files={"file": ("a.bin", data, "application/x-thing")},
    )
    assert r.status_code == 201, r.text
    got = record(http, r.json()["id"])
    assert (got["content_hash"], got["size_bytes"]) == (sha(data), len(data))
    assert (got["content_type"], got["filename"], got["content"]) == (
        "application/x-thing",
        "a.bin",
        None,
    )


def _json_create_error(http: httpx.Client, fields: dict[str, Any]) -> Any:
    r = http.post("/artifacts", json={**fields, "content": "x"})
    assert r.status_code == 422
    return r.json()


@pytest.mark.parametrize(
    ("field", "form_value", "json_value", "error_type"),
    [
        ("artifact_type", "not-a-type", "not-a-type", "enum"),
        ("metadata", "[1, 2]", [1, 2], "dict_type"),
        ("metadata", "not json", "not json", "dict_type"),
        ("metadata", "42", 42, "dict_type"),
        ("workflow_id", "", "", "string_too_short"),
        ("derived_from", '{"a": 1}', {"a": 1}, "list_type"),
    ],
)
def test_multipart_create_422_matches_json(
    live: Live,
    http: httpx.Client,
    field: str,
    form_value: str,
    json_value: Any,
    error_type: str,
) -> None:
    """A multipart create answers the very same 422 body as the JSON create would."""
    fields = {"workflow_id": "w", "artifact_type": "text", "title": "t"}
    before = snapshot(live)
    form = {**fields, field: form_value}
    body = multipart(*(field_part(k, v) for k, v in form.items()), file_part(b"zz" * 70_000))
    r = http.post("/artifacts", content=body, headers={"Content-Type": FORM_TYPE})
    assert r.status_code == 422
    assert r.json() == _json_create_error(http, {**fields, field: json_value})
    [error] = r.json()["detail"]
    assert (error["type"], error["loc"], error["input"]) == (
        error_type,
        ["body", field],
        json_value,
    )
    assert_nothing_stored(live, before)


def test_multipart_create_missing_workflow_id(live: Live, http: httpx.Client) -> None:
    before = snapshot(live)
    body = multipart(field_part("artifact_type", "text"), field_part("title", "t"), file_part(b"x"))
    r = http.post("/artifacts", content=body, headers={"Content-Type": FORM_TYPE})
    assert r.status_code == 422
    assert r.json() == {
        "detail": [
            {
                "type": "missing",
                "loc": ["body", "workflow_id"],
                "msg": "Field required",
                "input": {"artifact_type": "text", "title": "t"},
            }
        ]
    }
    assert_nothing_stored(live, before)


@pytest.mark.parametrize("route", ["create", "upload"])
@pytest.mark.parametrize("size", [3, 2 * MiB], ids=["small", "large-then-pause"])
def test_field_after_file_part(live: Live, http: httpx.Client, route: str, size: int) -> None:
    """A form field after the file part is refused; for the large file the server has already
    started to store it when it meets the field (after a pause), and must throw that away."""
    aid = new_artifact(http, "kept")
    data = _random_bytes(2, size)
    pause = 0.1 if size > 3 else 0.0
    if route == "create":
        target = "/artifacts"
        head = multipart(*(field_part(k, v) for k, v in CREATE_FIELDS), file_part(data))
    else:
        target = f"/artifacts/{aid}/upload"
        head = multipart(file_part(data))
    body = head[: -len(f"--{BOUNDARY}--\r\n")]
    tail = (
        f"--{BOUNDARY}\r\n".encode()
        + field_part("session_id", "late")
        + (f"\r\n--{BOUNDARY}--\r\n".encode())
    )
    before = snapshot(live)
    r = rawhttp.request(
        live.url, "POST", target, [("Content-Type", FORM_TYPE)], [body, tail], pause=pause
    )
    assert (r.status, r.json()) == (
        422,
        {
            "detail": [
                {
                    "type": "field_after_file",
                    "loc": ["body", "session_id"],
                    "msg": "Form fields must come before the file part",
                    "input": None,
                }
            ]
        },
    )
    assert_nothing_stored(live, before)
    assert record(http, aid)["content_hash"] == sha(b"kept")


# -- declared digests --------------------------------------------------------------------------

DIGEST_DATA = _random_bytes(3, 3 * MiB + 17)
OTHER = b"other bytes"


def _digest_request(kind: str, right: bool) -> tuple[dict[str, str], bytes, str, str]:
    """(headers, body, expected digest the server must report, declared hex) for an upload of
    DIGEST_DATA with the digest declared one way."""
    declared_of = DIGEST_DATA if right else OTHER
    if kind == "content-digest":
        headers = {"Content-Type": "application/x-data"}
        headers["Content-Digest"] = f"sha-256=:{b64_digest(declared_of)}:"
        return headers, DIGEST_DATA, sha(DIGEST_DATA), sha(declared_of)
    if kind == "x-content-sha256":
        headers = {"Content-Type": "application/x-data", "X-Content-SHA256": sha(declared_of)}
        headers["X-Content-SHA256"] = headers["X-Content-SHA256"].upper()
        return headers, DIGEST_DATA, sha(DIGEST_DATA), sha(declared_of)
    if kind == "form-field":
        body = multipart(field_part("sha256", sha(declared_of)), file_part(DIGEST_DATA))
        return {"Content-Type": FORM_TYPE}, body, sha(DIGEST_DATA), sha(declared_of)
    assert kind == "multipart-content-digest"  # covers the whole multipart body (RFC 9530)
    body = multipart(file_part(DIGEST_DATA))
    whole = body if right else DIGEST_DATA  # wrong: the file's digest, a common mistake
    headers = {"Content-Type": FORM_TYPE, "Content-Digest": f"sha-256=:{b64_digest(whole)}:"}
    return headers, body, sha(body), sha(whole)


DIGEST_KINDS = ["content-digest", "x-content-sha256", "form-field", "multipart-content-digest"]


@pytest.mark.parametrize("kind", DIGEST_KINDS)
def test_declared_digest_right(live: Live, http: httpx.Client, kind: str) -> None:
    aid = new_artifact(http)
    headers, body, _actual, _declared = _digest_request(kind, right=True)
    r = http.post(f"/artifacts/{aid}/upload", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["content_hash"] == sha(DIGEST_DATA)
    assert http.get(f"/artifacts/{aid}/download").content == DIGEST_DATA


@pytest.mark.parametrize("kind", DIGEST_KINDS)
def test_declared_digest_wrong(live: Live, http: httpx.Client, kind: str) -> None:
    aid = new_artifact(http, "original")
    headers, body, actual, declared = _digest_request(kind, right=False)
    before = snapshot(live)
    pieces = split(body, list(range(0, len(body), 256 * 1024)))
    r = rawhttp.request(
        live.url, "POST", f"/artifacts/{aid}/upload", list(headers.items()), pieces, pause=0.001
    )
    assert (r.status, r.json()) == (
        422,
        {
            "detail": f"The content's sha256 is {actual}, but the client declared {declared}; "
            "nothing was stored.",
            "code": "digest_mismatch",
        },
    )
    assert_nothing_stored(live, before)
    got = record(http, aid)
    assert (got["content_hash"], got["content"]) == (sha(b"original"), "original")


@pytest.mark.parametrize("right", [True, False], ids=["right", "wrong"])
def test_declared_digest_on_multipart_create(live: Live, http: httpx.Client, right: bool) -> None:
    data = _random_bytes(4, 2 * MiB)
    declared = sha(data if right else OTHER)
    body = create_form(data, field_part("sha256", declared))
    before = snapshot(live)
    r = rawhttp.request(
        live.url, "POST", "/artifacts", [("Content-Type", FORM_TYPE)],
        split(body, list(range(0, len(body), 512 * 1024))), pause=0.001,
    )  # fmt: skip
    if right:
        assert r.status == 201, r.body
        assert record(http, r.json()["id"])["content_hash"] == sha(data)
        return
    assert (r.status, r.json()) == (
        422,
        {
            "detail": f"The content's sha256 is {sha(data)}, but the client declared "
            f"{declared}; nothing was stored.",
            "code": "digest_mismatch",
        },
    )
    assert_nothing_stored(live, before)


def test_declared_digests_that_disagree(live: Live, http: httpx.Client) -> None:
    aid = new_artifact(http, "original")
    before = snapshot(live)
    r = http.post(
        f"/artifacts/{aid}/upload",
        content=DIGEST_DATA,
        headers={
            "Content-Digest": f"sha-256=:{b64_digest(DIGEST_DATA)}:",
            "X-Content-SHA256": sha(OTHER),
        },
    )
    assert (r.status_code, r.json()) == (
        422,
        {
            "detail": "The digests declared for this content disagree; nothing was stored.",
            "code": "digest_mismatch",
        },
    )
    assert_nothing_stored(live, before)
    assert record(http, aid)["content_hash"] == sha(b"original")


CD = ["header", "content-digest"]
MALFORMED_DIGESTS = [
    ("content-digest", "sha-256=:not base64!:", CD, "sha-256 Content-Digest"),
    ("content-digest", f"sha-256=:{base64.b64encode(b'x' * 16).decode()}:", CD,
     "sha-256 Content-Digest"),
    ("content-digest", sha(DIGEST_DATA), CD, "sha-256 Content-Digest"),
    ("x-content-sha256", "abc123", ["header", "x-content-sha256"], "hex sha256"),
    ("x-content-sha256", sha(DIGEST_DATA) + "0", ["header", "x-content-sha256"], "hex sha256"),
    ("form-field", "g" * 64, ["body", "sha256"], "hex sha256"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "value", "loc", "what"), MALFORMED_DIGESTS)
def test_malformed_digest(
    live: Live, http: httpx.Client, kind: str, value: str, loc: list[str], what: str
) -> None:
    aid = new_artifact(http, "original")
    before = snapshot(live)
    if kind == "form-field":
        body = multipart(field_part("sha256", value), file_part(DIGEST_DATA))
        headers = {"Content-Type": FORM_TYPE}
    else:
        body, headers = DIGEST_DATA, {kind: value}
    r = http.post(f"/artifacts/{aid}/upload", content=body, headers=headers)
    assert (r.status_code, r.json()) == (
        422,
        {"detail": [{"type": "digest_invalid", "loc": loc, "msg": f"Not a valid {what}",
                     "input": value}]},
    )  # fmt: skip
    assert_nothing_stored(live, before)
    assert record(http, aid)["content_hash"] == sha(b"original")


# -- limits ------------------------------------------------------------------------------------

TOO_LARGE = {
    "detail": f"The upload is larger than the limit of {LIMIT} bytes.",
    "code": "payload_too_large",
}


def _limit_target(client: httpx.Client, route: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """(target, headers, body prefix before the file bytes) for one of the upload routes."""
    if route == "raw":
        return f"/artifacts/{new_artifact(client)}/upload", [("Content-Type", "x/y")], b""
    closing = len(f"\r\n--{BOUNDARY}--\r\n")
    if route == "multipart-upload":
        prefix = multipart(file_part(b""))[:-closing]
        return f"/artifacts/{new_artifact(client)}/upload", [("Content-Type", FORM_TYPE)], prefix
    return "/artifacts", [("Content-Type", FORM_TYPE)], create_form(b"")[:-closing]


LIMIT_ROUTES = ["raw", "multipart-upload", "multipart-create"]


@pytest.mark.parametrize("route", LIMIT_ROUTES)
def test_413_at_once_when_content_length_is_too_large(limited: Live, route: str) -> None:
    """The answer comes before a single body byte is sent."""
    with limited.server.client() as client:
        target, headers, _prefix = _limit_target(client, route)
    before = snapshot(limited)
    with rawhttp.Connection(limited.url) as conn:
        conn.start("POST", target, headers, content_length=2 * LIMIT + 128 * 1024)
        r = conn.response(timeout=10)
    assert (r.status, r.json()) == (413, TOO_LARGE)
    assert_nothing_stored(limited, before)


@pytest.mark.parametrize("route", LIMIT_ROUTES)
def test_413_once_a_chunked_body_passes_the_limit(limited: Live, route: str) -> None:
    """No Content-Length: the server takes exactly LIMIT file bytes without answering, and
    answers 413 as soon as one more arrives, long before the body would end."""
    with limited.server.client() as client:
        target, headers, prefix = _limit_target(client, route)
    before = snapshot(limited)
    with rawhttp.Connection(limited.url) as conn:
        conn.start("POST", target, headers, chunked=True)
        conn.send(prefix)
        for _ in range(LIMIT // (64 * 1024)):
            conn.send(b"\x5a" * (64 * 1024))
        deadline = time.monotonic() + 10
        while not staging(limited) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(staging(limited)) == 1  # the upload is being staged
        assert not conn.answered(0.5)  # exactly LIMIT bytes is still acceptable
        conn.send(b"\x5a")
        assert conn.answered(10)
        r = conn.response(timeout=10)
    assert (r.status, r.json()) == (413, TOO_LARGE)
    assert_nothing_stored(limited, before)


@pytest.mark.parametrize("route", LIMIT_ROUTES)
def test_exactly_the_limit_is_accepted(limited: Live, route: str) -> None:
    data = _random_bytes(5, LIMIT)
    with limited.server.client() as client:
        target, headers, prefix = _limit_target(client, route)
        tail = f"\r\n--{BOUNDARY}--\r\n".encode() if prefix else b""
        r = rawhttp.request(limited.url, "POST", target, headers, [prefix, data, tail],
                            chunked=True)  # fmt: skip
        created = route == "multipart-create"
        assert r.status == (201 if created else 200), r.body
        got = record(client, r.json()["id" if created else "artifact_id"])
    assert (got["content_hash"], got["size_bytes"]) == (sha(data), LIMIT)


def test_413_when_a_declared_length_just_over_the_limit_is_sent(limited: Live) -> None:
    """Content-Length within the multipart allowance but over the limit for a raw body: the
    stream is cut at the limit."""
    with limited.server.client() as client:
        aid = new_artifact(client, "kept")
        before = snapshot(limited)
        r = rawhttp.request(limited.url, "POST", f"/artifacts/{aid}/upload", [],
                            [b"a" * (LIMIT + 1)])  # fmt: skip
        assert (r.status, r.json()) == (413, TOO_LARGE)
        assert_nothing_stored(limited, before)
        assert record(client, aid)["content_hash"] == sha(b"kept")


# -- malformed multipart bodies ---------------------------------------------------------------

CUT_DATA = _random_bytes(6, 2 * MiB)


def _cut_bodies(route: str) -> dict[str, bytes]:
    whole = create_form(CUT_DATA) if route == "create" else multipart(file_part(CUT_DATA))
    closing = f"\r\n--{BOUNDARY}--\r\n".encode()
    file_start = whole.index(CUT_DATA)
    bodies = {
        "inside-file-data": whole[: file_start + MiB],
        "after-file-data": whole[: -len(closing)],
        "closing-without-dashes": whole[: -len(b"--\r\n")],
        "closing-one-dash": whole[: -len(b"-\r\n")],
        "inside-part-headers": whole[: file_start - 10],
    }
    if route == "create":
        bodies["inside-fields"] = whole[: whole.index(b"wf-transfer") + 3]
    return bodies


@pytest.mark.parametrize("route", ["create", "upload"])
def test_cut_off_multipart_stores_nothing(live: Live, http: httpx.Client, route: str) -> None:
    """Content-Length matches the short body, so the server sees a clean end of the body."""
    aid = new_artifact(http, "kept")
    target = "/artifacts" if route == "create" else f"/artifacts/{aid}/upload"
    for name, body in _cut_bodies(route).items():
        before = snapshot(live)
        pieces = split(body, list(range(0, len(body), 512 * 1024)))
        r = rawhttp.request(
            live.url, "POST", target, [("Content-Type", FORM_TYPE)], pieces, pause=0.005
        )
        assert (r.status, r.json()) == (400, INCOMPLETE), name
        assert_nothing_stored(live, before)
    assert record(http, aid)["content_hash"] == sha(b"kept")


def test_closing_boundary_without_final_crlf_is_complete(live: Live, http: httpx.Client) -> None:
    aid = new_artifact(http)
    body = multipart(file_part(b"abc"))[: -len(b"\r\n")]
    r = http.post(f"/artifacts/{aid}/upload", content=body, headers={"Content-Type": FORM_TYPE})
    assert r.status_code == 200, r.text
    assert http.get(f"/artifacts/{aid}/download").content == b"abc"


MALFORMED_FORMS: list[tuple[str, str, bytes, int, Any]] = [
    ("no-file-part", FORM_TYPE, multipart(field_part("title", "t")), 422, MISSING_FILE),
    ("empty-form", FORM_TYPE, f"--{BOUNDARY}--\r\n".encode(), 422, MISSING_FILE),
    ("file-field-without-filename", FORM_TYPE,
     multipart(file_part(b"abc", filename=None)), 422,
     {"detail": [{"type": "file_expected", "loc": ["body", "file"],
                  "msg": "Expected a file part with a filename", "input": None}]}),
    ("two-file-parts", FORM_TYPE,
     multipart(file_part(_random_bytes(8, 2 * MiB)), file_part(b"two")), 422,
     {"detail": [{"type": "too_many_files", "loc": ["body", "file"],
                  "msg": "Exactly one file part is allowed", "input": None}]}),
    ("no-boundary", "multipart/form-data", multipart(file_part(b"abc")), 400,
     {"detail": "A multipart body needs a boundary parameter.", "code": "malformed_multipart"}),
    ("empty-boundary", "multipart/form-data; boundary=", multipart(file_part(b"abc")), 400,
     {"detail": "A multipart body needs a boundary parameter.", "code": "malformed_multipart"}),
    ("not-multipart-at-all", FORM_TYPE, b"hello world", 400,
     {"detail": "The multipart body is malformed.", "code": "malformed_multipart"}),
    ("other-boundary", FORM_TYPE, multipart(file_part(b"abc"), boundary="somethingelse"), 400,
     {"detail": "The multipart body is malformed.", "code": "malformed_multipart"}),
    ("empty-body", FORM_TYPE, b"", 400, INCOMPLETE),
]  # fmt: skip


@pytest.mark.parametrize("route", ["create", "upload"])
@pytest.mark.parametrize(
    ("content_type", "body", "status", "expected"),
    [case[1:] for case in MALFORMED_FORMS],
    ids=[case[0] for case in MALFORMED_FORMS],
)
def test_malformed_multipart(
    live: Live,
    http: httpx.Client,
    route: str,
    content_type: str,
    body: bytes,
    status: int,
    expected: Any,
) -> None:
    aid = new_artifact(http, "kept")
    if route == "create":
        target = "/artifacts"
        fields = multipart(*(field_part(k, v) for k, v in CREATE_FIELDS))[: -len(b"--\r\n")]
        mark = f"--{BOUNDARY}\r\n".encode()
        if body.startswith(mark):  # our forms: put the create fields first
            body = fields + b"\r\n" + body[len(mark) :]
        elif body == f"--{BOUNDARY}--\r\n".encode():
            body = fields + b"--\r\n"
    else:
        target = f"/artifacts/{aid}/upload"
    before = snapshot(live)
    r = http.post(target, content=body, headers={"Content-Type": content_type})
    assert (r.status_code, r.json()) == (status, expected)
    assert r.headers["content-type"] == "application/json"
    assert_nothing_stored(live, before)
    got = record(http, aid)
    assert (got["content_hash"], got["content_type"], got["filename"]) == (
        sha(b"kept"),
        "text/markdown",
        None,
    )


# -- concurrency -------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["upload", "create"])
def test_concurrent_identical_uploads_share_one_blob(
    live: Live, http: httpx.Client, route: str
) -> None:
    data = os.urandom(3 * MiB + 5)
    workers = 8
    targets = [new_artifact(http) for _ in range(workers)] if route == "upload" else []
    before = snapshot(live)
    barrier = threading.Barrier(workers)

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            barrier.wait()
            if route == "upload":
                return client.post(
                    f"/artifacts/{targets[i]}/upload?filename=same.bin", content=data,
                    headers={"Content-Type": "application/x-same"},
                )  # fmt: skip
            return client.post(
                "/artifacts",
                data={"workflow_id": "wf-con", "artifact_type": "other", "title": f"n{i}"},
                files={"file": ("same.bin", data, "application/x-same")},
            )

    with ThreadPoolExecutor(workers) as pool:
        responses = list(pool.map(one, range(workers)))
    assert [r.status_code for r in responses] == [200 if route == "upload" else 201] * workers
    ids = [r.json()["artifact_id" if route == "upload" else "id"] for r in responses]
    assert len(set(ids)) == workers
    assert {r.json()["content_hash"] for r in responses} == {sha(data)}
    after = snapshot(live)
    assert after.blob_files - before.blob_files == {blob_relpath(sha(data)).as_posix()}
    assert after.blob_rows == before.blob_rows + 1
    assert after.artifact_rows == before.artifact_rows + (0 if route == "upload" else workers)
    assert staging(live) == []
    for aid in ids:
        got = record(http, aid)
        assert (got["content_hash"], got["size_bytes"], got["filename"]) == (
            sha(data),
            len(data),
            "same.bin",
        )
    assert http.get(f"/artifacts/{ids[-1]}/download").content == data


# -- hostile filenames -------------------------------------------------------------------------

HOSTILE_NAMES: list[tuple[str, str | None]] = [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system32\\evil.dll", "evil.dll"),
    ("C:\\Users\\me\\report.txt", "report.txt"),
    ("/absolute/path/x.txt", "x.txt"),
    ("a\r\nX-Injected: 1\r\n\r\n<x>.txt", "aX-Injected: 1<x>.txt"),
    ("nul\x00byte.txt", "nulbyte.txt"),
    ("tab\tand\x7fdel\x1b[31m.txt", "tabanddel[31m.txt"),
    ("c1\u0085\u009b2J.txt", "c12J.txt"),
    ("quote\"d 'name'.txt", "quote\"d 'name'.txt"),
    ("a" * 1000, "a" * 255),
    ("é" * 1000, "é" * 127),
    ("résumé 📄.pdf", "résumé 📄.pdf"),
    ("..", None),
    ("../", None),
    ("\r\n", None),
]


def _multipart_filename(name: str) -> bytes:
    """The name as a quoted-string in the part header (backslash escapes, which the parser
    undoes); CR and LF cannot appear inside a header, so they are left out."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return escaped.replace("\r", "").replace("\n", "").encode()


def _upload_named(
    live: Live, client: httpx.Client, aid: str, name: str, transport: str, data: bytes
) -> int:
    if transport == "query":
        r = client.post(
            f"/artifacts/{aid}/upload?filename={quote(name, safe='')}",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return r.status_code
    body = multipart(file_part(data, _multipart_filename(name)))
    raw = rawhttp.request(live.url, "POST", f"/artifacts/{aid}/upload",
                          [("Content-Type", FORM_TYPE)], [body])  # fmt: skip
    return raw.status


def _parse_disposition(header: str) -> tuple[str, str]:
    match = re.fullmatch(r'attachment; filename="([^"]*)"; filename\*=UTF-8\'\'(\S*)', header)
    assert match is not None, header
    return match.group(1), match.group(2)


def assert_safe_name(stored: str | None, disposition: str, artifact_id: str) -> None:
    fallback, encoded = _parse_disposition(disposition)
    assert all(0x20 <= ord(c) < 0x7F for c in fallback)
    assert not set(fallback) & set('"\\\r\n')
    shown = stored if stored is not None else artifact_id
    assert unquote(encoded, errors="strict") == shown
    assert re.fullmatch(r"[A-Za-z0-9%._~-]*", encoded)
    assert len(fallback) == len(shown)
    assert all(f == s or f == "_" for f, s in zip(fallback, shown, strict=True))
    if stored is None:
        return
    assert stored
    assert "/" not in stored and "\\" not in stored
    assert not any(unicodedata.category(c) == "Cc" for c in stored), repr(stored)
    assert len(stored.encode()) <= 255
    assert stored not in (".", "..")


def assert_only_expected_files(live: Live, digests: set[str]) -> None:
    """Nothing written anywhere but the blobs the uploads made (and db, log, staging dir)."""
    root = live.data_dir.parent
    allowed = {blob_relpath(d).as_posix() for d in digests}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_dir():
            assert rel.parts[0] == "data" or path.name.startswith("artifacts.db"), rel
            continue
        if rel.parts[0] != "data":
            assert rel.name.startswith("artifacts.db"), rel
            continue
        inner = rel.relative_to("data")
        if len(inner.parts) == 1:
            assert re.fullmatch(r"server-\d+\.log|signing\.key", inner.name), inner
            continue
        assert inner.parts[0] == "blobs", inner
        blob = inner.relative_to("blobs").as_posix()
        assert blob.startswith("sha256/"), blob
        assert blob_relpath(inner.name).as_posix() == blob
    assert allowed <= blob_files(live)
    assert staging(live) == []


@pytest.mark.parametrize("transport", ["multipart", "query"])
def test_hostile_filenames(live: Live, http: httpx.Client, transport: str) -> None:
    digests = set()
    for name, expected in HOSTILE_NAMES:
        data = f"content for {name!r}".encode()
        aid = new_artifact(http)
        assert _upload_named(live, http, aid, name, transport, data) == 200, name
        digests.add(sha(data))
        got = record(http, aid)
        assert got["filename"] == expected, (name, got["filename"])
        d = http.get(f"/artifacts/{aid}/download")
        assert d.content == data
        assert_safe_name(got["filename"], d.headers["content-disposition"], aid)
    assert_only_expected_files(live, digests | {sha(b"seed")})


def test_raw_control_bytes_in_a_part_header(live: Live, http: httpx.Client) -> None:
    aid = new_artifact(http)
    body = multipart(file_part(b"x", b"../a\x00b\x01c\x7fd\xc2\x85e.txt"))
    r = rawhttp.request(live.url, "POST", f"/artifacts/{aid}/upload",
                        [("Content-Type", FORM_TYPE)], [body])  # fmt: skip
    assert r.status == 200, r.body
    got = record(http, aid)
    assert got["filename"] == "abcde.txt"
    d = http.head(f"/artifacts/{aid}/download")
    assert d.headers["content-disposition"] == (
        "attachment; filename=\"abcde.txt\"; filename*=UTF-8''abcde.txt"
    )


@PROPERTY_SETTINGS
@given(name=st.text(max_size=300), transport=st.sampled_from(["multipart", "query"]))
def test_any_filename_is_made_safe(
    live: Live, http: httpx.Client, name: str, transport: str
) -> None:
    aid = new_artifact(http)
    assert _upload_named(live, http, aid, name, transport, b"named") == 200
    got = record(http, aid)
    stored = got["filename"]
    d = http.head(f"/artifacts/{aid}/download")
    assert_safe_name(stored, d.headers["content-disposition"], aid)
    if stored is not None:
        # the stored name is what is left of the last path component, in order
        last = re.split(r"[/\\]", name)[-1]
        remaining = iter(last)
        assert all(c in remaining for c in stored), (name, stored)


def test_disposition_of_non_ascii_name(live: Live, http: httpx.Client) -> None:
    aid = new_artifact(http)
    r = http.post(
        f"/artifacts/{aid}/upload?filename={quote('résumé 📄.pdf')}",
        content=b"%PDF",
        headers={"Content-Type": "application/pdf"},
    )
    assert r.status_code == 200
    d = http.get(f"/artifacts/{aid}/download")
    assert d.headers["content-disposition"] == (
        'attachment; filename="r_sum_ _.pdf"; '
        "filename*=UTF-8''r%C3%A9sum%C3%A9%20%F0%9F%93%84.pdf"
    )


# -- memory --------------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _stream(total: int, block: int, digest: Any) -> Iterator[bytes]:
    """`total` bytes in `block`-sized chunks, each different, hashed as they are produced."""
    base = bytearray(random.Random(7).randbytes(block))
    for i in range(total // block):
        base[:8] = i.to_bytes(8, "big")
        chunk = bytes(base)
        digest.update(chunk)
        yield chunk


@pytest.mark.slow
def test_large_upload_keeps_server_memory_bounded(tmp_path: Path) -> None:
    total = 256 * MiB
    server = start_server(tmp_path / "data")
    pid = server.process.pid
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            aid = new_artifact(client)
            warm = hashlib.sha256()
            r = client.post(f"/artifacts/{aid}/upload", content=_stream(8 * MiB, MiB, warm))
            assert r.status_code == 200
            assert client.get(f"/artifacts/{aid}/download").content[:8] == bytes(8)
            with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            start = _status(pid)

            sent = hashlib.sha256()
            t0 = time.monotonic()
            r = client.post(
                f"/artifacts/{aid}/upload?filename=big.bin",
                content=_stream(total, MiB, sent),
                headers={"Content-Type": "application/octet-stream"},
            )
            upload_s = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert (r.json()["content_hash"], r.json()["size_bytes"]) == (sent.hexdigest(), total)
            after_upload = _status(pid)

            got = hashlib.sha256()
            size = 0
            with client.stream("GET", f"/artifacts/{aid}/download") as d:
                assert d.status_code == 200
                assert d.headers["content-length"] == str(total)
                for chunk in d.iter_raw():
                    got.update(chunk)
                    size += len(chunk)
            after_download = _status(pid)
        assert (size, got.hexdigest()) == (total, sent.hexdigest())
        assert list((server.data_dir / "blobs" / "tmp").iterdir()) == []
        growth = max(after_upload["VmHWM"], after_download["VmHWM"]) - start["VmRSS"]
        assert growth < 64 * MiB, (start, after_upload, after_download)
        assert upload_s < 25
    finally:
        server.stop()
