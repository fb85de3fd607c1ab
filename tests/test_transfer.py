"""Exact bytes in and out: uploads (raw and multipart, any chunking), downloads (Range, ETag,
If-Range, HEAD), text vs binary, declared digests, limits, malformed bodies, concurrent
identical uploads, hostile filenames and bounded server memory.

Everything runs against the real app in process (bodies "over a socket" in exact pieces go
through tests/support/rawhttp.py's ASGI connection, one `http.request` message per piece).
Apps are module-scoped (one per backend) so the property tests stay fast; every check of
"nothing was stored" compares before/after snapshots of the blob directory and the
blob/artifact rows. Bounded server memory (a process's RSS): tests/system/test_transfer_memory.py.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from storage.digest import blob_relpath
from tests.support import rawhttp
from tests.support.databases import (
    BACKENDS,
    count_rows,
)
from tests.support.transfer import (
    BOUNDARY,
    CONTENT_TYPES,
    CREATE_FIELDS,
    DIGEST_DATA,
    DIGEST_KINDS,
    FORM_TYPE,
    HOSTILE_NAMES,
    INCOMPLETE,
    LIMIT,
    LIMIT_ROUTES,
    MALFORMED_DIGESTS,
    MALFORMED_FORMS,
    OTHER,
    PROPERTY_SETTINGS,
    RANGE_SIZES,
    TOO_LARGE,
    Live,
    MiB,
    _cut_bodies,
    _digest_request,
    _json_create_error,
    _limit_target,
    _random_bytes,
    _upload_named,
    assert_download,
    assert_nothing_stored,
    assert_only_expected_files,
    assert_safe_name,
    b64_digest,
    create_form,
    expected_content,
    field_part,
    file_part,
    multipart,
    near_boundaries,
    new_artifact,
    payloads,
    range_case,
    record,
    running,
    send_upload,
    sha,
    snapshot,
    split,
    staging,
    without_date,
)


@pytest.fixture(scope="module", params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    with running(tmp_path_factory.mktemp("live"), request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(live: Live):
    with live.server.client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module", params=BACKENDS)
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    env = {"ARTIFACTS_MAX_UPLOAD_BYTES": str(LIMIT)}
    with running(tmp_path_factory.mktemp("limited"), request.param, env) as srv:
        yield srv


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
        "version": 2,
    }
    got = record(http, aid)
    assert got["content_hash"] == sha(data)
    assert got["size_bytes"] == len(data)
    assert got["content_type"] == content_type
    assert got["filename"] == "payload.bin"
    assert got["content"] == expected_content(data, textual)
    assert got["download_url"] == f"{live.url}/artifacts/{aid}/download"
    assert_download(http, live, aid, data, content_type)


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
    downloaded = http.get(download_url)
    assert downloaded.content == data
    assert downloaded.headers["content-type"] == content_type


def test_json_created_content_is_text(live: Live, http: httpx.Client) -> None:
    text = "# Título\n\nnaïve café ☕ \x00 end"
    aid = new_artifact(http, text)
    got = record(http, aid)
    assert got["content"] == text
    assert got["content_type"] == "text/markdown"
    assert got["content_hash"] == sha(text.encode())
    assert http.get(got["download_url"]).content == text.encode()


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
        "version": 1,
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
        "version": 1,
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
        with live.server.client(timeout=60) as client:
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
