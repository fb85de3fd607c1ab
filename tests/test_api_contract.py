"""CONTRACT.md, row by row and example by example, over HTTP against the real app in process.

Most tests share one module-scoped server over a SQLite file (cheap); the tests taking the
`server` fixture run once per backend (SQLite, and PostgreSQL when ARTIFACTS_TEST_POSTGRES_URL
is set). Nothing here mocks the storage: the only in-process access is seeding rows with
controlled ids or clocks through the real ArtifactService, against the server's own database.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database, sqlite_url
from storage.records import Cursor, NewArtifact
from tests.support.inprocess import AppServer, start_app

PREFIXES = ["/artifacts", "/api/v1/artifacts"]
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

# CONTRACT.md "Artifact types", written out here (not imported) so that the test is independent.
TYPES = (
    "research_summary", "analysis_report", "plan", "requirements", "design_doc", "code",
    "configuration", "script", "documentation", "readme", "api_spec", "test_results",
    "coverage_report", "text", "markdown", "json", "yaml", "execution_report", "other",
    "github_commit", "github_pr", "github_issue", "github_file", "github_branch", "url",
    "file_path",
)  # fmt: skip

# CONTRACT.md "Artifact record": every field and its JSON type(s).
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "workflow_id": (str,),
    "phase_id": (str, type(None)),
    "session_id": (str, type(None)),
    "artifact_type": (str,),
    "is_primary_deliverable": (bool,),
    "content": (str, type(None)),
    "content_type": (str,),
    "content_hash": (str,),
    "size_bytes": (int,),
    "title": (str,),
    "derived_from": (list,),
    "created_at": (str,),
    "created_by": (str, type(None)),
    "metadata": (dict,),
}
SUMMARY_FIELDS = (
    "id",
    "workflow_id",
    "phase_id",
    "artifact_type",
    "title",
    "size_bytes",
    "created_at",
)

BOUNDARY = "contract-boundary-7d1c9a"
NON_ASCII = "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001f389\n"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def srv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract")


@pytest.fixture(scope="module")
def srv_db(srv_root: Path) -> str:
    """The module server's database (the server migrates it at start-up)."""
    return sqlite_url(srv_root / "artifacts.db")


@pytest.fixture(scope="module")
def srv(srv_root: Path, srv_db: str) -> Iterator[AppServer]:
    """One server for most tests of this module: SQLite under a module tmp dir."""
    server = start_app(srv_root / "data", database_url=srv_db)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(srv: AppServer) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


# -- helpers --------------------------------------------------------------------------------


def unique(label: str = "wf") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def payload(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "workflow_id": unique(),
        "artifact_type": "text",
        "title": "a title",
        "content": "hello",
    }
    body.update(overrides)
    return body


def create(client: httpx.Client, prefix: str = "/artifacts", **overrides: Any) -> dict[str, Any]:
    body = payload(**overrides)
    r = client.post(prefix, json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def get_record(client: httpx.Client, artifact_id: str, prefix: str = "/artifacts") -> Any:
    r = client.get(f"{prefix}/{artifact_id}")
    assert r.status_code == 200, r.text
    return r.json()


def assert_problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, str]:
    """A non-422 error: exactly {"detail": <str>, "code": <str>}."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"detail", "code"}, body
    assert isinstance(body["detail"], str) and body["detail"].strip(), body
    assert isinstance(body["code"], str) and re.fullmatch(r"[a-z][a-z0-9_]*", body["code"]), body
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


def assert_exact(r: httpx.Response, status: int, literal: str) -> None:
    """The body is exactly `literal` (CONTRACT.md's compact JSON), as JSON and byte for byte."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(literal)
    assert r.content == literal.encode()


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def assert_422_shape(r: httpx.Response) -> list[dict[str, Any]]:
    assert r.status_code == 422, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], list) and body["detail"], body
    for item in body["detail"]:
        assert (
            {"type", "loc", "msg", "input"} <= set(item) <= {"type", "loc", "msg", "input", "ctx"}
        ), item
        assert isinstance(item["type"], str) and isinstance(item["msg"], str)
        assert isinstance(item["loc"], list) and item["loc"][0] in ("body", "query", "header")
    return list(body["detail"])


def file_part(
    data: bytes, content_type: str | None = "application/octet-stream", name: str = "file"
) -> tuple[list[str], bytes]:
    headers = [f'Content-Disposition: form-data; name="{name}"; filename="upload.bin"']
    if content_type is not None:
        headers.append(f"Content-Type: {content_type}")
    return headers, data


def field_part(name: str, value: str) -> tuple[list[str], bytes]:
    return [f'Content-Disposition: form-data; name="{name}"'], value.encode()


def multipart(*parts: tuple[list[str], bytes], close: bool = True) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body built by hand, so that every byte is under the test's control."""
    out = b""
    for headers, data in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        out += "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + data + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return out, {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def blob_files(data_dir: Path) -> set[Path]:
    return {p for p in (data_dir / "blobs" / "sha256").rglob("*") if p.is_file()}


def staging_files(data_dir: Path) -> list[Path]:
    return list((data_dir / "blobs" / "tmp").iterdir())


def blob_path(data_dir: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return data_dir / "blobs" / "sha256" / digest[:2] / digest[2:4] / digest


def seed(
    database_url: str,
    data_dir: Path,
    rows: list[NewArtifact],
    *,
    ids: list[str] | None = None,
    clock: Callable[[], int] | None = None,
) -> list[str]:
    """Create rows through the real service, with chosen ids and/or clock, in the server's DB."""

    async def run() -> list[str]:
        db = Database(database_url)
        try:
            kwargs: dict[str, Any] = {}
            if ids is not None:
                pending = iter(ids)
                kwargs["new_id"] = lambda: next(pending)
            if clock is not None:
                kwargs["clock"] = clock
            service = ArtifactService(db, FilesystemBlobStore(data_dir / "blobs"), **kwargs)
            out = []
            for i, new in enumerate(rows):
                out.append((await service.create(new, f"seeded {i}".encode())).id)
            return out
        finally:
            await db.dispose()

    return anyio.run(run)


def new_row(workflow_id: str, **kw: Any) -> NewArtifact:
    fields: dict[str, Any] = {
        "workflow_id": workflow_id,
        "artifact_type": "text",
        "title": "seeded",
        "content_type": "text/plain",
    }
    fields.update(kw)
    return NewArtifact(**fields)


# -- POST /artifacts ------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_answers_201_with_the_contract_body(http: httpx.Client, prefix: str) -> None:
    r = http.post(prefix, json=payload(title="First", artifact_type="Design_DOC"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert {"id", "title", "artifact_type", "status"} <= set(body)
    assert UUID4.fullmatch(body["id"]), body["id"]
    assert len(body["id"]) == 36
    assert body["title"] == "First"
    assert body["artifact_type"] == "design_doc"
    assert body["status"] == "created"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_persists_every_field_and_get_returns_it(http: httpx.Client, prefix: str) -> None:
    wf = unique()
    p1 = create(http, prefix, workflow_id=wf)["id"]
    p2 = create(http, prefix, workflow_id=wf)["id"]
    metadata = {
        "source": "agent",
        "n": 3,
        "ratio": 0.5,
        "nested": {"list": [1, "two", None, True], "empty": {}},
        "unicode": "\u00e9\u65e5",
    }
    sent = {
        "workflow_id": wf,
        "artifact_type": "ANALYSIS_Report",
        "title": "Report \u00e9",
        "content": NON_ASCII,
        "phase_id": "discovery",
        "session_id": "sess-42",
        "content_type": "text/plain; charset=utf-8",
        "created_by": "agent:planner",
        "metadata": metadata,
        "is_primary_deliverable": True,
        "derived_from": [p2, p1],  # order as given, not sorted
    }
    r = http.post(prefix, json=sent)
    assert r.status_code == 201, r.text
    created = r.json()
    got = get_record(http, created["id"], prefix)  # immediately readable after the 201
    assert {k: got[k] for k in RECORD_FIELDS} == {
        "id": created["id"],
        "workflow_id": wf,
        "phase_id": "discovery",
        "session_id": "sess-42",
        "artifact_type": "analysis_report",
        "is_primary_deliverable": True,
        "content": NON_ASCII,
        "content_type": "text/plain; charset=utf-8",
        "content_hash": hashlib.sha256(NON_ASCII.encode()).hexdigest(),
        "size_bytes": len(NON_ASCII.encode()),
        "title": "Report \u00e9",
        "derived_from": [p2, p1],
        "created_at": got["created_at"],
        "created_by": "agent:planner",
        "metadata": metadata,
    }
    assert TIMESTAMP.fullmatch(got["created_at"]), got["created_at"]
    assert len(NON_ASCII.encode()) != len(NON_ASCII)  # the size really is in bytes


def test_create_defaults(http: httpx.Client) -> None:
    created = create(http)
    got = get_record(http, created["id"])
    assert got["content_type"] == "text/markdown"
    assert got["phase_id"] is None
    assert got["session_id"] is None
    assert got["created_by"] is None
    assert got["derived_from"] == []
    assert got["metadata"] == {}
    assert got["is_primary_deliverable"] is False
    assert got["content"] == "hello"


def test_every_artifact_type_is_accepted_case_insensitively(http: httpx.Client) -> None:
    wf = unique()
    for i, artifact_type in enumerate(TYPES):
        sent = artifact_type.upper() if i % 2 else artifact_type.title()
        created = create(http, workflow_id=wf, artifact_type=sent)
        assert created["artifact_type"] == artifact_type
        assert get_record(http, created["id"])["artifact_type"] == artifact_type


@pytest.mark.parametrize(
    "content",
    [
        NON_ASCII,
        "x",
        "\u00e9" * 1000,
        "line one\r\nline two\n\ttabbed \u2603\u0000 nul kept",
        "\U0001f600" * 3,
    ],
)
def test_content_hash_and_size_describe_the_utf8_bytes(http: httpx.Client, content: str) -> None:
    created = create(http, content=content)
    encoded = content.encode("utf-8")
    got = get_record(http, created["id"])
    assert got["content_hash"] == hashlib.sha256(encoded).hexdigest()
    assert got["size_bytes"] == len(encoded)
    assert got["content"] == content
    assert SHA256_HEX.fullmatch(got["content_hash"])


def test_a_get_right_after_each_post_finds_it(http: httpx.Client) -> None:
    for i in range(25):
        r = http.post("/artifacts", json=payload(content=f"body {i}"))
        assert r.status_code == 201, r.text
        artifact_id = r.json()["id"]
        assert http.get(f"/artifacts/{artifact_id}").json()["content"] == f"body {i}"
        content = http.get(f"/artifacts/{artifact_id}/content")
        assert content.status_code == 200 and content.json()["content"] == f"body {i}"


def test_ids_are_distinct_random_uuid4(http: httpx.Client) -> None:
    ids = [create(http)["id"] for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(UUID4.fullmatch(i) for i in ids)
    assert uuid.UUID(ids[0]).version == 4
    # random, not time-ordered: the first 8 characters (what users type) are not shared
    assert len({i[:8] for i in ids}) == 20


# -- GET /artifacts/{id} --------------------------------------------------------------------


def test_record_has_all_contract_fields_with_their_types(http: httpx.Client) -> None:
    bare = create(http)["id"]
    parent = create(http)["id"]
    full = create(
        http,
        phase_id="p",
        session_id="s",
        created_by="me",
        metadata={"a": 1},
        derived_from=[parent],
        is_primary_deliverable=True,
    )["id"]
    for artifact_id in (bare, full):
        for include in ("true", "false"):
            got = http.get(f"/artifacts/{artifact_id}", params={"include_content": include})
            assert got.status_code == 200
            record = got.json()
            assert set(RECORD_FIELDS) <= set(record)
            for name, types in RECORD_FIELDS.items():
                value = record[name]
                assert isinstance(value, types), (name, value)
                if bool not in types:
                    assert not isinstance(value, bool), (name, value)
            assert all(isinstance(p, str) for p in record["derived_from"])
            assert record["id"] == artifact_id
            assert SHA256_HEX.fullmatch(record["content_hash"])
            assert TIMESTAMP.fullmatch(record["created_at"])
    full_record = get_record(http, full)
    assert (full_record["phase_id"], full_record["session_id"], full_record["created_by"]) == (
        "p",
        "s",
        "me",
    )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_include_content_flag(http: httpx.Client, prefix: str) -> None:
    artifact_id = create(http, prefix, content="the text")["id"]
    assert http.get(f"{prefix}/{artifact_id}").json()["content"] == "the text"  # default true
    for value in ("true", "1", "yes", "on", "True", "TRUE"):
        r = http.get(f"{prefix}/{artifact_id}", params={"include_content": value})
        assert r.status_code == 200, (value, r.text)
        assert r.json()["content"] == "the text", value
    for value in ("false", "0", "no", "off", "False", "OFF"):
        r = http.get(f"{prefix}/{artifact_id}", params={"include_content": value})
        assert r.status_code == 200, (value, r.text)
        record = r.json()
        assert record["content"] is None, value
        # everything else is still there
        assert record["size_bytes"] == len(b"the text")
        assert record["content_hash"] == hashlib.sha256(b"the text").hexdigest()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_include_content_maybe_is_the_exact_422(http: httpx.Client, prefix: str) -> None:
    artifact_id = create(http, prefix)["id"]
    r = http.get(f"{prefix}/{artifact_id}", params={"include_content": "maybe"})
    assert_exact(
        r,
        422,
        '{"detail":[{"type":"bool_parsing","loc":["query","include_content"],'
        '"msg":"Input should be a valid boolean, unable to interpret input","input":"maybe"}]}',
    )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_id_is_404_artifact_not_found(http: httpx.Client, prefix: str) -> None:
    missing = str(uuid.uuid4())
    assert_problem(http.get(f"{prefix}/{missing}"), 404, "artifact_not_found")
    assert_problem(http.get(f"{prefix}/{missing}/content"), 404, "artifact_not_found")
    assert_problem(http.get(f"{prefix}/not-an-id-at-all"), 404, "artifact_not_found")


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unique_id_prefix_of_8_or_more_characters(http: httpx.Client, prefix: str) -> None:
    artifact_id = create(http, prefix, content="by prefix")["id"]
    for length in (8, 9, 13, 20, 35, 36):
        ref = artifact_id[:length]
        r = http.get(f"{prefix}/{ref}")
        assert r.status_code == 200, (length, r.text)
        assert r.json()["id"] == artifact_id
        c = http.get(f"{prefix}/{ref}/content")
        assert c.status_code == 200, (length, c.text)
        assert c.json()["artifact_id"] == artifact_id
        assert c.json()["content"] == "by prefix"
    for length in (1, 4, 7):  # too short to name one: 404, saying so and the minimum
        ref = artifact_id[:length]
        for suffix in ("", "/content"):
            body = assert_problem(http.get(f"{prefix}/{ref}{suffix}"), 404, "artifact_not_found")
            assert "too short" in body["detail"] and "at least 8 characters" in body["detail"]


def test_ambiguous_prefix_is_409_and_deleted_rows_do_not_count(
    server: AppServer, database_url: str
) -> None:
    """Two ids sharing their first 9 characters, seeded through the real service (both DBs)."""
    base = uuid.uuid4().hex[:8]
    a = f"{base}-aaaa-4aaa-8aaa-{uuid.uuid4().hex[:12]}"
    b = f"{base}-bbbb-4bbb-9bbb-{uuid.uuid4().hex[:12]}"
    wf = unique()
    seed(database_url, server.data_dir, [new_row(wf), new_row(wf)], ids=[a, b])
    with server.client() as client:
        for prefix in PREFIXES:
            for ref in (base, base + "-"):
                for suffix in ("", "/content"):
                    r = client.get(f"{prefix}/{ref}{suffix}")
                    body = assert_problem(r, 409, "ambiguous_artifact_id")
                    assert ref in body["detail"]
            for ref, expected in ((base + "-a", a), (base + "-bbbb", b), (a, a), (b, b)):
                r = client.get(f"{prefix}/{ref}")
                assert r.status_code == 200, r.text
                assert r.json()["id"] == expected
                assert client.get(f"{prefix}/{ref}/content").json()["artifact_id"] == expected
        # after deleting one, the shared prefix names the other one only
        assert client.delete(f"/artifacts/{a}").status_code == 200
        r = client.get(f"/artifacts/{base}")
        assert r.status_code == 200, r.text
        assert r.json()["id"] == b
        assert_problem(client.get(f"/artifacts/{base}-a"), 404, "artifact_not_found")


# -- GET /artifacts/{id}/content ------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_content_route_body(http: httpx.Client, prefix: str) -> None:
    artifact_id = create(http, prefix, content=NON_ASCII, content_type="text/x-rst")["id"]
    r = http.get(f"{prefix}/{artifact_id}/content")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in ("artifact_id", "content", "content_type", "size_bytes")} == {
        "artifact_id": artifact_id,
        "content": NON_ASCII,
        "content_type": "text/x-rst",
        "size_bytes": len(NON_ASCII.encode()),
    }


# -- PUT /artifacts/{id} --------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_put_updates_title_metadata_and_primary_flag(http: httpx.Client, prefix: str) -> None:
    artifact_id = create(http, prefix, title="before", metadata={"old": True})["id"]
    before = get_record(http, artifact_id, prefix)

    def put(body: dict[str, Any]) -> None:
        r = http.put(f"{prefix}/{artifact_id}", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert {"artifact_id", "status"} <= set(out)
        assert (out["artifact_id"], out["status"]) == (artifact_id, "updated")

    put({"title": "after"})
    got = get_record(http, artifact_id, prefix)
    assert (got["title"], got["metadata"], got["is_primary_deliverable"]) == (
        "after",
        {"old": True},
        False,
    )

    put({"metadata": {"new": [1, 2], "k": "v"}})
    got = get_record(http, artifact_id, prefix)
    assert (got["title"], got["metadata"]) == ("after", {"new": [1, 2], "k": "v"})

    put({"is_primary_deliverable": True})
    assert get_record(http, artifact_id, prefix)["is_primary_deliverable"] is True

    put({"title": "all three", "metadata": {}, "is_primary_deliverable": False})
    got = get_record(http, artifact_id, prefix)
    assert (got["title"], got["metadata"], got["is_primary_deliverable"]) == (
        "all three",
        {},
        False,
    )
    # content and identity are untouched by PUT
    for name in (
        "id",
        "content",
        "content_hash",
        "size_bytes",
        "content_type",
        "created_at",
        "workflow_id",
        "artifact_type",
        "derived_from",
    ):
        assert got[name] == before[name], name


@pytest.mark.parametrize("prefix", PREFIXES)
def test_put_rejects_empty_and_unknown_keys(http: httpx.Client, prefix: str) -> None:
    artifact_id = create(http, prefix, title="kept")["id"]
    detail = assert_422_shape(http.put(f"{prefix}/{artifact_id}", json={}))
    assert len(detail) == 1 and detail[0]["loc"] == ["body"] and detail[0]["input"] == {}
    assert_exact(
        http.put(f"{prefix}/{artifact_id}", json={"title": "changed", "bogus": 1}),
        422,
        '{"detail":[{"type":"extra_forbidden","loc":["body","bogus"],'
        '"msg":"Extra inputs are not permitted","input":1}]}',
    )
    assert_exact(
        http.put(f"{prefix}/{artifact_id}", json={"content": "no"}),
        422,
        '{"detail":[{"type":"extra_forbidden","loc":["body","content"],'
        '"msg":"Extra inputs are not permitted","input":"no"}]}',
    )
    assert get_record(http, artifact_id, prefix)["title"] == "kept"
    missing = str(uuid.uuid4())
    assert_problem(http.put(f"{prefix}/{missing}", json={"title": "x"}), 404, "artifact_not_found")


# -- DELETE /artifacts/{id} -----------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_delete_then_everything_is_404(srv: AppServer, http: httpx.Client, prefix: str) -> None:
    wf = unique()
    doomed = create(http, prefix, workflow_id=wf, phase_id="ph")["id"]
    kept = create(http, prefix, workflow_id=wf, phase_id="ph")["id"]
    listed = http.get(prefix, params={"workflow_id": wf}).json()
    assert [row["id"] for row in listed] == [kept, doomed]

    r = http.delete(f"{prefix}/{doomed}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"artifact_id", "status"} <= set(body)
    assert (body["artifact_id"], body["status"]) == (doomed, "deleted")

    assert_problem(http.get(f"{prefix}/{doomed}"), 404, "artifact_not_found")
    assert_problem(http.get(f"{prefix}/{doomed[:8]}"), 404, "artifact_not_found")
    assert_problem(http.get(f"{prefix}/{doomed}/content"), 404, "artifact_not_found")
    assert_problem(http.put(f"{prefix}/{doomed}", json={"title": "x"}), 404, "artifact_not_found")
    assert_problem(http.delete(f"{prefix}/{doomed}"), 404, "artifact_not_found")
    blobs_before = blob_files(srv.data_dir)
    data = os.urandom(64)
    content, headers = multipart(file_part(data))
    r = http.post(f"{prefix}/{doomed}/upload", content=content, headers=headers)
    assert_problem(r, 404, "artifact_not_found")
    assert blob_files(srv.data_dir) == blobs_before

    for params in ({"workflow_id": wf}, {"workflow_id": wf, "phase_id": "ph"}):
        assert [row["id"] for row in http.get(prefix, params=params).json()] == [kept]
    assert doomed not in {row["id"] for row in http.get(prefix, params={"limit": 200}).json()}
    assert get_record(http, kept, prefix)["id"] == kept


# -- POST /artifacts/{id}/upload ------------------------------------------------------------


def check_upload(
    client: httpx.Client,
    server_url: str,
    prefix: str,
    artifact_id: str,
    data: bytes,
    part_type: str | None,
    stored_type: str,
    text: str | None,
) -> None:
    content, headers = multipart(file_part(data, part_type))
    r = client.post(f"{prefix}/{artifact_id}/upload", content=content, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"artifact_id", "storage_url", "status"} <= set(body)
    assert (body["artifact_id"], body["status"]) == (artifact_id, "uploaded")
    url = urlsplit(body["storage_url"])
    assert url.scheme in ("http", "https") and url.netloc == urlsplit(server_url).netloc, url
    download = client.get(body["storage_url"], timeout=30)
    assert download.status_code == 200
    assert download.content == data

    got = get_record(client, artifact_id, prefix)
    assert got["content_hash"] == hashlib.sha256(data).hexdigest()
    assert got["size_bytes"] == len(data)
    assert got["content_type"] == stored_type
    assert got["content"] == text
    c = client.get(f"{prefix}/{artifact_id}/content").json()
    assert (c["content"], c["content_type"], c["size_bytes"]) == (text, stored_type, len(data))


BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\xc3\x28 invalid utf-8 \x80\x00" + bytes(range(256))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_upload_replaces_content_with_exact_bytes(
    srv: AppServer, http: httpx.Client, prefix: str
) -> None:
    artifact_id = create(http, prefix, content="original text")["id"]
    data = BINARY + os.urandom(16)
    check_upload(http, srv.url, prefix, artifact_id, data, "image/png", "image/png", None)
    # the part's Content-Type absent: application/octet-stream
    data = os.urandom(300) + b"\x00\xff"
    check_upload(http, srv.url, prefix, artifact_id, data, None, "application/octet-stream", None)
    # text bytes under a text type: readable as content again
    check_upload(
        http,
        srv.url,
        prefix,
        artifact_id,
        NON_ASCII.encode(),
        "text/plain; charset=utf-8",
        "text/plain; charset=utf-8",
        NON_ASCII,
    )
    # invalid UTF-8 under a text type: stored exactly, content null
    check_upload(
        http,
        srv.url,
        prefix,
        artifact_id,
        b"ok \xff\xfe\x00 bad",
        "text/plain",
        "text/plain",
        None,
    )
    # an empty file is content too
    check_upload(
        http, srv.url, prefix, artifact_id, b"", "application/x-empty", "application/x-empty", None
    )


def test_upload_of_a_large_body_streams_the_exact_bytes(srv: AppServer, http: httpx.Client) -> None:
    artifact_id = create(http)["id"]
    data = os.urandom(3 * 1024 * 1024 + 17)
    check_upload(
        http, srv.url, "/artifacts", artifact_id, data, "application/zip", "application/zip", None
    )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_upload_to_unknown_artifact_is_404_and_stores_nothing(
    srv: AppServer, http: httpx.Client, prefix: str
) -> None:
    data = os.urandom(4096)
    before = blob_files(srv.data_dir)
    content, headers = multipart(file_part(data))
    r = http.post(f"{prefix}/{uuid.uuid4()}/upload", content=content, headers=headers)
    assert_problem(r, 404, "artifact_not_found")
    assert not blob_path(srv.data_dir, data).exists()
    assert blob_files(srv.data_dir) == before
    assert staging_files(srv.data_dir) == []


@pytest.mark.parametrize("prefix", PREFIXES)
def test_upload_without_a_file_part_is_the_exact_422(http: httpx.Client, prefix: str) -> None:
    artifact_id = create(http, prefix)["id"]
    expected = (
        '{"detail":[{"type":"missing","loc":["body","file"],"msg":"Field required","input":null}]}'
    )
    for parts in ([field_part("note", "no file here")], []):
        content, headers = multipart(*parts)
        r = http.post(f"{prefix}/{artifact_id}/upload", content=content, headers=headers)
        assert_exact(r, 422, expected)
    assert get_record(http, artifact_id, prefix)["content"] == "hello"


@pytest.mark.parametrize(
    "cut",
    ["after-data", "after-data-crlf", "mid-data", "mid-closing-boundary", "mid-part-headers"],
)
def test_truncated_multipart_changes_nothing(srv: AppServer, http: httpx.Client, cut: str) -> None:
    artifact_id = create(http, content="original")["id"]
    before_record = get_record(http, artifact_id)
    before_blobs = blob_files(srv.data_dir)
    data = os.urandom(200_000)
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="x.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = {
        "after-data": head + data,
        "after-data-crlf": head + data + b"\r\n",
        "mid-data": head + data[:100_000],
        "mid-closing-boundary": head + data + f"\r\n--{BOUNDARY}".encode(),
        "mid-part-headers": head[:40],
    }[cut]
    r = http.post(
        f"/artifacts/{artifact_id}/upload",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 422:
        assert_problem(r, r.status_code)
    after = get_record(http, artifact_id)
    assert after["content_hash"] == before_record["content_hash"]
    assert after["size_bytes"] == before_record["size_bytes"]
    assert after["content"] == "original"
    assert blob_files(srv.data_dir) == before_blobs
    assert not blob_path(srv.data_dir, data).exists()
    assert staging_files(srv.data_dir) == []


# -- GET /artifacts -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_list_is_a_bare_array_of_summaries_newest_first(http: httpx.Client, prefix: str) -> None:
    wf = unique()
    made = [
        create(http, prefix, workflow_id=wf, title=f"t{i}", content="x" * i)["id"]
        for i in range(1, 5)
    ]
    r = http.get(prefix, params={"workflow_id": wf})
    assert r.status_code == 200, r.text
    rows = r.json()
    assert isinstance(rows, list)
    assert [row["id"] for row in rows] == made[::-1]
    for row in rows:
        assert set(SUMMARY_FIELDS) <= set(row)
        record = get_record(http, row["id"], prefix)
        assert {k: row[k] for k in SUMMARY_FIELDS} == {k: record[k] for k in SUMMARY_FIELDS}
    assert rows == sorted(rows, key=lambda row: (row["created_at"], row["id"]), reverse=True)
    assert [row["size_bytes"] for row in rows] == [4, 3, 2, 1]


def test_list_ties_on_created_at_are_ordered_by_id_descending(
    srv: AppServer, srv_db: str, http: httpx.Client
) -> None:
    wf = unique()
    ids = [str(uuid.uuid4()) for _ in range(6)]
    seed(
        srv_db,
        srv.data_dir,
        [new_row(wf) for _ in ids],
        ids=ids,
        clock=lambda: 1_800_000_000_000_000,
    )
    rows = http.get("/artifacts", params={"workflow_id": wf}).json()
    assert [row["id"] for row in rows] == sorted(ids, reverse=True)
    assert {row["created_at"] for row in rows} == {"2027-01-15T08:00:00.000000Z"}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_list_filters_apply_before_the_limit(http: httpx.Client, prefix: str) -> None:
    wf = unique()
    phase = unique("phase")
    old = create(http, prefix, workflow_id=wf, phase_id=phase, artifact_type="plan")["id"]
    for _ in range(3):
        create(http, prefix, workflow_id=wf, phase_id=unique("other"), artifact_type="code")
    other_wf = create(http, prefix, workflow_id=unique(), phase_id=phase, artifact_type="plan")

    def ids(**params: Any) -> list[str]:
        r = http.get(prefix, params=params)
        assert r.status_code == 200, r.text
        return [row["id"] for row in r.json()]

    assert ids(workflow_id=wf, phase_id=phase, limit=1) == [old]
    assert ids(workflow_id=wf, artifact_type="plan", limit=1) == [old]
    assert ids(workflow_id=wf, artifact_type="PLAN", limit=1) == [old]
    assert ids(phase_id=phase, limit=2) == [other_wf["id"], old]
    assert ids(phase_id=phase, artifact_type="plan", workflow_id=wf) == [old]
    assert ids(workflow_id=wf, artifact_type="yaml") == []
    assert len(ids(workflow_id=wf)) == 4
    assert ids(workflow_id=unique()) == []


def test_list_limit_default_50_max_200(srv: AppServer, srv_db: str, http: httpx.Client) -> None:
    wf = unique()
    seed(srv_db, srv.data_dir, [new_row(wf) for _ in range(205)])
    assert len(http.get("/artifacts", params={"workflow_id": wf}).json()) == 50
    assert len(http.get("/artifacts", params={"workflow_id": wf, "limit": 1}).json()) == 1
    assert len(http.get("/artifacts", params={"workflow_id": wf, "limit": 200}).json()) == 200
    assert len(http.get("/api/v1/artifacts", params={"workflow_id": wf, "limit": 73}).json()) == 73


# -- every 422 example of CONTRACT.md, byte for byte -----------------------------------------

VALID = {"workflow_id": "w", "artifact_type": "text", "title": "t", "content": "c"}
MISSING_BODY = {"artifact_type": "text", "title": "t", "content": "c"}

EXAMPLES = [
    pytest.param(
        "GET", "", {"params": {"limit": "0"}},
        '{"detail":[{"type":"greater_than_equal","loc":["query","limit"],'
        '"msg":"Input should be greater than or equal to 1","input":"0","ctx":{"ge":1}}]}',
        id="limit=0",
    ),
    pytest.param(
        "GET", "", {"params": {"limit": "201"}},
        '{"detail":[{"type":"less_than_equal","loc":["query","limit"],'
        '"msg":"Input should be less than or equal to 200","input":"201","ctx":{"le":200}}]}',
        id="limit=201",
    ),
    pytest.param(
        "GET", "", {"params": {"limit": "abc"}},
        '{"detail":[{"type":"int_parsing","loc":["query","limit"],'
        '"msg":"Input should be a valid integer, unable to parse string as an integer",'
        '"input":"abc"}]}',
        id="limit=abc",
    ),
    pytest.param(
        "POST", "", {"json": {**VALID, "extra": 1}},
        '{"detail":[{"type":"extra_forbidden","loc":["body","extra"],'
        '"msg":"Extra inputs are not permitted","input":1}]}',
        id="POST-extra-key",
    ),
    pytest.param(
        "POST", "", {"json": MISSING_BODY},
        '{"detail":[{"type":"missing","loc":["body","workflow_id"],"msg":"Field required",'
        f'"input":{compact(MISSING_BODY)}}}]}}',
        id="POST-missing",
    ),
    pytest.param(
        "POST", "", {"json": {**VALID, "workflow_id": 1}},
        '{"detail":[{"type":"string_type","loc":["body","workflow_id"],'
        '"msg":"Input should be a valid string","input":1}]}',
        id="POST-wrong-type",
    ),
    pytest.param(
        "POST", "", {"content": b"x", "headers": {"content-type": "application/json"}},
        '{"detail":[{"type":"json_invalid","loc":["body",0],"msg":"JSON decode error",'
        '"input":{},"ctx":{"error":"Expecting value"}}]}',
        id="POST-bad-JSON",
    ),
    pytest.param(
        "POST", "", {"json": [1]},
        '{"detail":[{"type":"model_attributes_type","loc":["body"],'
        '"msg":"Input should be a valid dictionary or object to extract fields from",'
        '"input":[1]}]}',
        id="POST-[1]",
    ),
    pytest.param(
        "GET", "/{id}", {"params": {"include_content": "maybe"}},
        '{"detail":[{"type":"bool_parsing","loc":["query","include_content"],'
        '"msg":"Input should be a valid boolean, unable to interpret input","input":"maybe"}]}',
        id="include_content=maybe",
    ),
    pytest.param(
        "POST", "/{id}/upload", {"multipart": [field_part("other", "1")]},
        '{"detail":[{"type":"missing","loc":["body","file"],"msg":"Field required",'
        '"input":null}]}',
        id="upload-without-file",
    ),
]  # fmt: skip


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("method", "path", "kwargs", "literal"), EXAMPLES)
def test_contract_422_examples_byte_for_byte(
    http: httpx.Client,
    prefix: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    literal: str,
) -> None:
    if "{id}" in path:
        path = path.replace("{id}", create(http)["id"])
    kwargs = dict(kwargs)
    if "multipart" in kwargs:
        kwargs["content"], kwargs["headers"] = multipart(*kwargs.pop("multipart"))
    r = http.request(method, prefix + path, **kwargs)
    assert_exact(r, 422, literal)


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    "raw", ["x", "{", "", " ", '{"workflow_id": }', "[1,", '{"a" 1}', "tru", "{}x", '"s']
)
def test_bad_json_is_fastapis_json_invalid(http: httpx.Client, prefix: str, raw: str) -> None:
    headers = {"content-type": "application/json"}
    target = create(http)["id"]
    for method, path in (("POST", prefix), ("PUT", f"{prefix}/{target}")):
        r = http.request(method, path, content=raw.encode(), headers=headers)
        if raw == "":
            assert_exact(
                r,
                422,
                '{"detail":[{"type":"missing","loc":["body"],"msg":"Field required",'
                '"input":null}]}',
            )
            continue
        with pytest.raises(json.JSONDecodeError) as info:
            json.loads(raw)
        expected = {
            "detail": [
                {
                    "type": "json_invalid",
                    "loc": ["body", info.value.pos],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": info.value.msg},
                }
            ]
        }
        assert_exact(r, 422, compact(expected))


def test_unknown_artifact_type_is_an_enum_422_listing_the_26_types(http: httpx.Client) -> None:
    expected_list = ", ".join(f"'{t}'" for t in TYPES[:-1]) + f" or '{TYPES[-1]}'"
    for prefix in PREFIXES:
        r = http.post(prefix, json={**VALID, "artifact_type": "Bogus"})
        assert r.json() == {
            "detail": [
                {
                    "type": "enum",
                    "loc": ["body", "artifact_type"],
                    "msg": f"Input should be {expected_list}",
                    "input": "Bogus",
                    "ctx": {"expected": expected_list},
                }
            ]
        }
        assert r.status_code == 422
        assert all(f"'{t}'" in r.json()["detail"][0]["msg"] for t in TYPES)
        # the list filter is a free string matched exactly (CONTRACT.md): no match, no error
        q = http.get(prefix, params={"artifact_type": "bogus"})
        assert (q.status_code, q.json()) == (200, [])
    assert len(TYPES) == 26


def test_the_type_filter_is_a_free_string_and_empty_is_no_filter(http: httpx.Client) -> None:
    """What Syntropic's dashboard sends from its type filter (CONTRACT.md, GET /artifacts)."""
    wf = f"wf-{uuid.uuid4()}"
    made = create(http, workflow_id=wf, artifact_type="plan")
    everything = http.get("/artifacts", params={"workflow_id": wf}).json()
    assert [a["id"] for a in everything] == [made["id"]]
    for value, expected in (
        ("plan", [made["id"]]),
        ("", [made["id"]]),
        ("PLAN", [made["id"]]),
        ("image", []),
    ):
        r = http.get("/artifacts", params={"workflow_id": wf, "artifact_type": value, "limit": 100})
        assert r.status_code == 200, (value, r.text)
        assert [a["id"] for a in r.json()] == expected, value


def test_empty_content_is_string_too_short(http: httpx.Client) -> None:
    for prefix in PREFIXES:
        assert_exact(
            http.post(prefix, json={**VALID, "content": ""}),
            422,
            '{"detail":[{"type":"string_too_short","loc":["body","content"],'
            '"msg":"String should have at least 1 character","input":"","ctx":{"min_length":1}}]}',
        )


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_parent_in_derived_from_is_422_at_its_index(
    srv: AppServer, http: httpx.Client, prefix: str
) -> None:
    wf = unique()
    parent = create(http, prefix)["id"]
    ghost = str(uuid.uuid4())
    before = blob_files(srv.data_dir)
    for parents, index, bad in (([parent, ghost], 1, ghost), ([ghost], 0, ghost)):
        body = payload(workflow_id=wf, derived_from=parents, content=uuid.uuid4().hex)
        detail = assert_422_shape(http.post(prefix, json=body))
        assert len(detail) == 1
        assert detail[0]["loc"] == ["body", "derived_from", index]
        assert detail[0]["input"] == bad
    # a deleted parent is unknown too
    gone = create(http, prefix)["id"]
    assert http.delete(f"{prefix}/{gone}").status_code == 200
    detail = assert_422_shape(
        http.post(prefix, json=payload(workflow_id=wf, derived_from=[parent, gone]))
    )
    assert [d["loc"] for d in detail] == [["body", "derived_from", 1]]
    assert http.get(prefix, params={"workflow_id": wf}).json() == []  # nothing was created
    assert blob_files(srv.data_dir) == before


def test_metadata_over_64_kib_is_422(http: httpx.Client) -> None:
    def sized(n: int) -> dict[str, str]:
        value = {"k": "x" * (n - len(compact({"k": ""}).encode()))}
        assert len(compact(value).encode()) == n
        return value

    ok = create(http, metadata=sized(64 * 1024))
    assert get_record(http, ok["id"])["metadata"] == sized(64 * 1024)
    for prefix in PREFIXES:
        wf = unique()
        for big in (sized(64 * 1024 + 1), {"k": "\u00e9" * 40_000}, sized(200_000)):
            detail = assert_422_shape(http.post(prefix, json=payload(workflow_id=wf, metadata=big)))
            assert [d["loc"] for d in detail] == [["body", "metadata"]]
            assert detail[0]["input"] == big
            detail = assert_422_shape(http.put(f"{prefix}/{ok['id']}", json={"metadata": big}))
            assert [d["loc"] for d in detail] == [["body", "metadata"]]
        assert http.get(prefix, params={"workflow_id": wf}).json() == []
    assert get_record(http, ok["id"])["metadata"] == sized(64 * 1024)


# -- routing errors -------------------------------------------------------------------------


def test_unknown_route_is_bare_404(http: httpx.Client) -> None:
    artifact_id = create(http)["id"]
    for method, path in (
        ("GET", "/nope"),
        ("GET", "/api/v1/nope"),
        ("GET", "/api/v2/artifacts"),
        ("POST", "/artifact"),
        ("GET", f"/artifacts/{artifact_id}/nope"),
        ("GET", f"/api/v1/artifacts/{artifact_id}/content/extra"),
        ("DELETE", "/api/v1"),
    ):
        assert_exact(http.request(method, path), 404, '{"detail":"Not Found"}')


def test_wrong_method_is_bare_405(http: httpx.Client) -> None:
    artifact_id = create(http)["id"]
    for prefix in PREFIXES:
        for method, path in (
            ("PATCH", ""),
            ("DELETE", ""),
            ("PUT", ""),
            ("PATCH", f"/{artifact_id}"),
            ("POST", f"/{artifact_id}"),
            ("GET", f"/{artifact_id}/upload"),
            ("PUT", f"/{artifact_id}/upload"),
            ("POST", f"/{artifact_id}/content"),
            ("DELETE", f"/{artifact_id}/content"),
        ):
            r = http.request(method, prefix + path)
            assert_exact(r, 405, '{"detail":"Method Not Allowed"}')
    assert get_record(http, artifact_id)["id"] == artifact_id


def test_wrong_content_type_on_post_is_415(http: httpx.Client) -> None:
    for prefix in PREFIXES:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
            r = http.post(
                prefix, content=json.dumps(VALID).encode(), headers={"content-type": ctype}
            )
            assert_problem(r, 415)


# -- one key flow on every backend ----------------------------------------------------------


def test_key_flow_on_each_backend(server: AppServer) -> None:
    """Create, read, prefix, list, update, upload, download, delete: SQLite and PostgreSQL."""
    with server.client() as client:
        for prefix in PREFIXES:
            wf = unique()
            parent = create(client, prefix, workflow_id=wf)["id"]
            sent = {
                "workflow_id": wf,
                "artifact_type": "Research_Summary",
                "title": "R",
                "content": NON_ASCII,
                "phase_id": "ph",
                "session_id": "se",
                "content_type": "text/plain",
                "created_by": "bot",
                "metadata": {"x": [1, {"y": None}]},
                "is_primary_deliverable": True,
                "derived_from": [parent],
            }
            r = client.post(prefix, json=sent)
            assert r.status_code == 201, r.text
            artifact_id = r.json()["id"]
            assert UUID4.fullmatch(artifact_id)
            got = get_record(client, artifact_id[:8], prefix)
            assert {k: got[k] for k in RECORD_FIELDS} == {
                "id": artifact_id,
                "workflow_id": wf,
                "phase_id": "ph",
                "session_id": "se",
                "artifact_type": "research_summary",
                "is_primary_deliverable": True,
                "content": NON_ASCII,
                "content_type": "text/plain",
                "content_hash": hashlib.sha256(NON_ASCII.encode()).hexdigest(),
                "size_bytes": len(NON_ASCII.encode()),
                "title": "R",
                "derived_from": [parent],
                "created_at": got["created_at"],
                "created_by": "bot",
                "metadata": {"x": [1, {"y": None}]},
            }
            assert TIMESTAMP.fullmatch(got["created_at"])
            rows = client.get(prefix, params={"workflow_id": wf}).json()
            assert [row["id"] for row in rows] == [artifact_id, parent]
            r = client.put(f"{prefix}/{artifact_id}", json={"title": "R2", "metadata": {}})
            assert r.json() == {"artifact_id": artifact_id, "status": "updated"}
            check_upload(
                client, server.url, prefix, artifact_id, BINARY, "image/png", "image/png", None
            )
            r = client.delete(f"{prefix}/{artifact_id}")
            assert (r.status_code, r.json()) == (
                200,
                {"artifact_id": artifact_id, "status": "deleted"},
            )
            assert_problem(client.get(f"{prefix}/{artifact_id}"), 404, "artifact_not_found")
            assert [row["id"] for row in client.get(prefix, params={"workflow_id": wf}).json()] == [
                parent
            ]


# -- hostile and odd input never answers 5xx -------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _with(member: bytes) -> bytes:
    """VALID with one extra raw JSON member appended."""
    return compact(VALID).encode()[:-1] + b"," + member + b"}"


def _raw(field: str, raw_value: bytes) -> bytes:
    """VALID with `field` set to a raw JSON value (replacing it when VALID has it)."""
    body = {k: v for k, v in VALID.items() if k != field}
    return compact(body).encode()[:-1] + f',"{field}":'.encode() + raw_value + b"}"


Case = tuple[str, str, str, dict[str, Any], int | None]


def hostile_requests(artifact_id: str) -> list[Case]:
    """(label, method, path, httpx kwargs, the exact status, or None for any non-5xx)."""
    jh = {"content-type": "application/json"}
    mh = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    cases: list[Case] = []

    def post(label: str, body: bytes, status: int | None = 422) -> None:
        cases.append((label, "POST", "/artifacts", {"content": body, "headers": jh}, status))

    def put(label: str, body: bytes, status: int | None = 422) -> None:
        path = f"/artifacts/{artifact_id}"
        cases.append((label, "PUT", path, {"content": body, "headers": jh}, status))

    def query(label: str, params: dict[str, str], status: int | None = 422) -> None:
        cases.append((label, "GET", "/artifacts", {"params": params}, status))

    # bytes that are not UTF-8
    post("non-utf8 bytes", b'{"workflow_id": "\xff\xfe", "title": "t"}')
    post("latin-1 body", '{"workflow_id": "caf\u00e9"}'.encode("latin-1"))
    put("non-utf8 put", b'{"title": "\xc3\x28"}')
    # numbers JSON does not have
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        post(f"{constant.decode()} in metadata", _with(b'"metadata": {"x": ' + constant + b"}"))
        put(f"{constant.decode()} in put", b'{"metadata": {"x": ' + constant + b"}}")
    post("1e400 in metadata", _with(b'"metadata": {"x": 1e400}'))
    post("-1e400 in metadata", _with(b'"metadata": {"x": [-1e400]}'))
    post("1e400 as title", _raw("title", b"1e400"))
    post("1e400 as flag", _raw("is_primary_deliverable", b"1e400"))
    put("1e400 in put", b'{"metadata": {"x": 1e400}}')
    post("1e-400 in metadata", _with(b'"metadata": {"x": 1e-400}'), 201)
    # nesting
    post("10000 nested lists", b"[" * 10000 + b"]" * 10000)
    post("10000 nested objects", _nested(10000))
    for depth in (500, 900, 940, 946, 950, 960, 990, 1000, 1100, 10000):
        post(f"metadata nested {depth}", _raw("metadata", _nested(depth)))
        post(f"created_by nested {depth}", _raw("created_by", _nested(depth)))
        put(f"put metadata nested {depth}", b'{"metadata": ' + _nested(depth) + b"}")
    post("metadata nested 100", _raw("metadata", _nested(100)), 201)
    # huge integers
    post("5000-digit integer", b'{"workflow_id": ' + b"9" * 5000 + b"}")
    post("4000-digit integer as created_by", _raw("created_by", b"9" * 4000))
    post("300-digit integer in metadata", _with(b'"metadata": {"n": ' + b"9" * 300 + b"}"), 201)
    post("huge negative in metadata", _with(b'"metadata": {"n": -' + b"9" * 30 + b"}"), 201)
    post("huge integer as flag", _raw("is_primary_deliverable", b"9" * 400))
    # NUL characters and lone surrogates in strings
    for name in ("workflow_id", "title", "phase_id", "session_id", "content_type", "created_by"):
        post(f"NUL in {name}", _raw(name, b'"a\\u0000b"'))
        post(f"lone surrogate in {name}", _raw(name, b'"\\ud800x"'))
    post("NUL in derived_from", _raw("derived_from", b'["a\\u0000b"]'))
    post("NUL in artifact_type", _raw("artifact_type", b'"te\\u0000xt"'))
    post("NUL in metadata", _raw("metadata", b'{"k\\u0000": "v\\u0000"}'), 201)
    post("NUL in content", _raw("content", b'"a\\u0000b"'), 201)
    put("NUL in put title", b'{"title": "a\\u0000b"}')
    post("lone surrogate in content", _raw("content", b'"\\ud800"'))
    post("lone low surrogate in content", _raw("content", b'"ab\\udc00"'))
    post("lone surrogate in metadata value", _raw("metadata", b'{"a": "\\udfff"}'))
    post("lone surrogate in metadata key", _raw("metadata", b'{"\\ud800": 1}'))
    post("lone surrogate as extra key", _with(b'"\\ud800": 1'))
    post("lone surrogate as artifact_type", _raw("artifact_type", b'"\\ud800"'))
    post("lone surrogate in derived_from", _raw("derived_from", b'["\\ud800"]'))
    put("lone surrogate in put title", b'{"title": "\\ud800"}')
    post("reversed surrogate pair", _raw("title", b'"\\ude00\\ud83d"'))
    post("valid surrogate pair", _raw("title", b'"\\ud83d\\ude00"'), 201)
    post("escaped backslash-u text", _raw("title", b'"\\\\ud800"'), 201)
    # odd shapes
    for label, body in (
        ("empty body", b""),
        ("whitespace body", b"   \n"),
        ("null body", b"null"),
        ("string body", b'"text"'),
        ("1e999 body", b"1e999"),
        ("list of objects", b"[{}]"),
        ("duplicate keys", b'{"workflow_id": "a", "workflow_id": 1}'),
    ):
        post(label, body)
    # json.loads (and so FastAPI) detects UTF-16/32 and a UTF-8 BOM: any non-5xx answer will do
    post("BOM", b"\xef\xbb\xbf" + compact(VALID).encode(), None)
    post("UTF-16", compact(VALID).encode("utf-16"), None)
    post("UTF-16 lone surrogate", '{"title": "\\ud800"}'.encode("utf-16-le"), None)
    for name, value in (
        ("derived_from", "abc"),
        ("derived_from", [1, 2]),
        ("metadata", [1]),
        ("metadata", None),
        ("metadata", "{}"),
        ("is_primary_deliverable", "maybe"),
        ("workflow_id", ""),
        ("workflow_id", None),
        ("content_type", ""),
        ("title", ["t"]),
    ):
        post(f"{name}={value!r}", compact({**VALID, name: value}).encode())
    put("put list", b"[1]")
    put("put null title", b'{"title": null}')
    put("put flag string", b'{"is_primary_deliverable": "maybe"}')
    # media types
    cases.append(
        (
            "text/plain POST",
            "POST",
            "/artifacts",
            {"content": compact(VALID).encode(), "headers": {"content-type": "text/plain"}},
            415,
        )
    )
    cases.append(
        (
            "urlencoded POST",
            "POST",
            "/api/v1/artifacts",
            {"content": b"a=b", "headers": {"content-type": "application/x-www-form-urlencoded"}},
            415,
        )
    )
    # query strings
    for value in (
        "notadate",
        "2026-13-45",
        "2026-02-30T00:00:00Z",
        "yesterday",
        "1e20",
        "99999-01-01",
        "2026-01-01T25:00:00",
        "\u0000",
        "-" * 50,
        "",
    ):
        query(f"created_after={value!r}", {"created_after": value})
        query(f"created_before={value!r}", {"created_before": value})
    query("created_after year 1", {"created_after": "0001-01-01T00:00:00+14:00"}, 200)
    query("created_before year 9999", {"created_before": "9999-12-31T23:59:59-14:00"}, 200)
    uid = str(uuid.uuid4())
    for value in (
        "!!!",
        "",
        "abc",
        "djE6",
        "v1:1:x",
        "=" * 10,
        "\u00e9" * 20,
        Cursor(created_at=10**20 - 1, id=uid).encode(),  # passes int64
        Cursor(created_at=2**63, id=uid).encode(),
        base64_text(f"v1:-1:{uid}"),
        base64_text(f"v1:1:{uid.upper()}"),
        base64_text(f"v2:1:{uid}"),
    ):
        query(f"cursor={value!r}", {"cursor": value})
    query("cursor int64 max", {"cursor": Cursor(created_at=2**63 - 1, id=uid).encode()}, 200)
    query("limit huge", {"limit": "9" * 40})
    query("limit float", {"limit": "1.5"})
    query("limit negative", {"limit": "-1"})
    for name in ("workflow_id", "phase_id", "session_id", "content_type"):
        query(f"NUL in {name} filter", {name: "a\u0000b"})
        query(f"long {name} filter", {name: "x" * 8000}, 200)
        query(f"non-ASCII {name} filter", {name: "\u00e9\U0001f389"}, 200)
    query("NUL in artifact_type filter", {"artifact_type": "te\u0000xt"})
    query("flag filter maybe", {"is_primary_deliverable": "maybe"})
    # odd ids in paths
    for path in (
        "/artifacts/%00",
        "/artifacts/%FF%FE%FD%FC%FB%FA%F9%F8",
        "/artifacts/" + "a" * 5000,
        "/artifacts/abcdefgh%00",
        "/artifacts/abcdefgh%00/content",
        "/artifacts/%ED%A0%80" * 3,
        "/artifacts/%25%25%25%25%25%25%25%25",
        "/artifacts/" + "\u00e9" * 10,
        "/artifacts/--------",
        "/artifacts/________",
        "/artifacts/..%2F..%2Fetc%2Fpasswd",
    ):
        cases.append((f"GET {path[:40]}", "GET", path, {}, 404))
    cases.append(
        (
            "include_content empty",
            "GET",
            f"/artifacts/{artifact_id}",
            {"params": {"include_content": ""}},
            None,
        )
    )
    # malformed uploads
    up = f"/artifacts/{artifact_id}/upload"
    for label, body, headers in (
        ("no boundary", b"--x\r\n", {"content-type": "multipart/form-data"}),
        ("empty boundary", b"--\r\n", {"content-type": "multipart/form-data; boundary="}),
        ("huge boundary", b"x", {"content-type": "multipart/form-data; boundary=" + "b" * 500}),
        ("garbage body", os.urandom(2000), mh),
        ("empty multipart body", b"", mh),
        ("only closing delimiter", f"--{BOUNDARY}--\r\n".encode(), mh),
        ("two file parts", multipart(file_part(b"1"), file_part(b"2"))[0], mh),
        (
            "file part without filename",
            multipart((['Content-Disposition: form-data; name="file"'], b"x"))[0],
            mh,
        ),
        (
            "control characters in part headers",
            multipart(
                (
                    [
                        'Content-Disposition: form-data; name="file"; filename="a\x00b\x1b"',
                        "Content-Type: text/pl\x00ain",
                    ],
                    b"x",
                )
            )[0],
            mh,
        ),
        (
            "huge part header",
            multipart(
                (
                    [
                        'Content-Disposition: form-data; name="file"; filename="'
                        + "f" * 40_000
                        + '"'
                    ],
                    b"x",
                )
            )[0],
            mh,
        ),
        ("many parts", multipart(*[field_part(f"f{i}", "v") for i in range(100)])[0], mh),
        (
            "latin-1 filename",
            multipart(
                (['Content-Disposition: form-data; name="file"; filename="\u00ff\u00fe"'], b"x")
            )[0],
            mh,
        ),
    ):
        cases.append((f"upload {label}", "POST", up, {"content": body, "headers": headers}, None))
    # the same JSON hazards in the form fields of a multipart create (not in CONTRACT.md)
    for label, raw in (
        ("lone surrogate", '{"a": "\\ud800"}'),
        ("1e400", '{"x": 1e400}'),
        ("NaN", '{"x": NaN}'),
        ("nested 950", _nested(950).decode()),
    ):
        form = [field_part(k, v) for k, v in VALID.items() if k != "content"]
        body, headers = multipart(*form, field_part("metadata", raw), file_part(b"x"))
        cases.append((f"form create metadata {label}", "POST", "/artifacts",
                      {"content": body, "headers": headers}, 422))  # fmt: skip
    return cases


def base64_text(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_hostile_input_never_answers_5xx(server: AppServer) -> None:
    with server.client() as setup:
        artifact_id = create(setup)["id"]
    failures: list[str] = []
    # No keep-alive: one bad answer must not hide the next behind a reset connection.
    with server.client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for label, method, path, kwargs, status in hostile_requests(artifact_id):
            try:
                r = client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                failures.append(f"{label}: {type(exc).__name__} {exc}")
                continue
            try:
                body = r.json()
            except ValueError:
                failures.append(f"{label}: {r.status_code} non-JSON body {r.content[:80]!r}")
                continue
            if r.status_code >= 500 or (status is not None and r.status_code != status):
                failures.append(f"{label}: {r.status_code} (want {status}) {r.text[:200]}")
                continue
            if r.status_code == 422:
                assert_422_shape(r)
            elif r.status_code >= 400 and body not in (
                {"detail": "Not Found"},
                {"detail": "Method Not Allowed"},
            ):
                assert_problem(r, r.status_code)
            # whatever was accepted must also read back, render and list
            if r.status_code == 201:
                created = body["id"]
                for follow in (f"/artifacts/{created}", f"/artifacts/{created}/content"):
                    g = client.get(follow)
                    if g.status_code != 200:
                        failures.append(f"{label}: GET {follow} -> {g.status_code} {g.text[:200]}")
                wf = client.get(f"/artifacts/{created}").json().get("workflow_id", "")
                g = client.get("/artifacts", params={"workflow_id": wf})
                if g.status_code != 200 or created not in {row["id"] for row in g.json()}:
                    failures.append(f"{label}: list -> {g.status_code} {g.text[:200]}")
        # the artifact everything was thrown at still reads (valid uploads replaced its bytes)
        last = client.get(f"/artifacts/{artifact_id}")
        assert last.status_code == 200 and last.json()["id"] == artifact_id
    assert failures == [], "\n".join(failures)
    assert staging_files(server.data_dir) == []
