"""Exact bytes in and out: the app on a fresh database, multipart bodies built by hand, and the
checks that nothing was stored (tests/test_transfer.py, tests/system/test_transfer_memory.py)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from storage.digest import blob_relpath
from tests.support import rawhttp
from tests.support.databases import (
    count_rows,
    fresh_database,
)
from tests.support.inprocess import AppServer, start_app

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


@dataclass
class Live:
    server: AppServer
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
    """The app on a fresh database (migrated at start, as `artifacts serve` does)."""
    with fresh_database(root, backend) as url:
        server = start_app(root / "data", database_url=url, env=env)
        try:
            yield Live(server, url)
        finally:
            server.stop()


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


RANGE_SIZES = (0, 1, 7, 1000, 2 * MiB + 3)


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


def _json_create_error(http: httpx.Client, fields: dict[str, Any]) -> Any:
    r = http.post("/artifacts", json={**fields, "content": "x"})
    assert r.status_code == 422
    return r.json()


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
