"""Versions over HTTP (the app in process; SQLite, and PostgreSQL when configured): the list and
one version's record, its download with the current download's semantics, prefixes, signed links
that name a version, conditional uploads (If-Match) and their race, lineage pins, exports."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from app.asgi import create_app
from app.settings import Settings
from storage.db.tables import blobs
from tests.support.databases import count_rows
from tests.support.inprocess import AppServer, start_app
from tests.support.links import linked_server


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def create(http: httpx.Client, content: str = "v1 text", **fields: Any) -> str:
    body = {"workflow_id": "wf-v", "artifact_type": "text", "title": "t", "content": content}
    r = http.post("/artifacts", json={**body, **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def upload(
    http: httpx.Client,
    aid: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    return http.post(
        f"/artifacts/{aid}/upload",
        content=data,
        params=params,
        headers={"content-type": content_type, **(headers or {})},
    )


def uploaded(http: httpx.Client, aid: str, data: bytes, **kw: Any) -> None:
    r = upload(http, aid, data, **kw)
    assert r.status_code == 200, r.text


def problem(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"detail", "code"} and body["code"] == code, body
    return str(body["detail"])


def staged_files(server: AppServer) -> list[Path]:
    tmp = server.data_dir / "blobs" / "tmp"
    return [p for p in tmp.rglob("*") if p.is_file()] if tmp.exists() else []


# -- versions after each kind of write -------------------------------------------------------


def test_versions_follow_create_uploads_and_not_metadata_updates(
    server: AppServer, client: httpx.Client
) -> None:
    aid = create(client, "first")
    assert client.get(f"/artifacts/{aid}").json()["version"] == 1
    uploaded(client, aid, b"\x00second", filename="two.bin")
    r = client.post(f"/artifacts/{aid}/upload", files={"file": ("3.txt", b"third", "text/plain")})
    assert r.status_code == 200, r.text
    assert client.put(f"/artifacts/{aid}", json={"title": "renamed"}).status_code == 200
    assert client.put(f"/artifacts/{aid}", json={"is_primary_deliverable": True}).status_code == 200
    uploaded(client, aid, b"third", content_type="text/plain")  # the same bytes: a version too
    record = client.get(f"/artifacts/{aid}").json()
    assert (record["version"], record["title"], record["content_hash"]) == (
        4,
        "renamed",
        sha(b"third"),
    )
    listed = client.get(f"/artifacts/{aid}/versions")
    assert listed.status_code == 200 and "link" not in listed.headers
    versions = listed.json()
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert [v["content_hash"] for v in versions] == [
        sha(b"third"),
        sha(b"third"),
        sha(b"\x00second"),
        sha(b"first"),
    ]
    assert [v["is_current"] for v in versions] == [True, False, False, False]
    assert versions[0]["superseded_at"] is None
    assert all(v["superseded_at"] is not None for v in versions[1:])
    assert versions[2]["filename"] == "two.bin" and versions[1]["filename"] == "3.txt"
    assert versions[3]["content_type"] == "text/markdown"
    for v in versions:
        assert set(v) == {
            "artifact_id", "version", "is_current", "content_type", "content_hash",
            "size_bytes", "filename", "created_by", "created_at", "superseded_at",
            "download_url",
        }  # fmt: skip
        assert v["artifact_id"] == aid
        assert v["download_url"] == f"{server.url}/artifacts/{aid}/versions/{v['version']}/download"
    # under /api/v1, the links say so
    v1 = client.get(f"/api/v1/artifacts/{aid}/versions").json()
    assert v1[0]["download_url"] == f"{server.url}/api/v1/artifacts/{aid}/versions/4/download"


def test_a_create_answers_its_version_as_an_upload_does(client: httpx.Client) -> None:
    """The 201 names version 1 (JSON and multipart creates), the next upload version 2."""
    body = {"workflow_id": "wf-v", "artifact_type": "text", "title": "t", "content": "x"}
    made = client.post("/artifacts", json=body)
    assert (made.status_code, made.json()["version"]) == (201, 1)
    form = {k: v for k, v in body.items() if k != "content"}
    multi = client.post("/artifacts", data=form, files={"file": ("a.bin", b"\x00")})
    assert (multi.status_code, multi.json()["version"]) == (201, 1)
    r = upload(client, made.json()["id"], b"second")
    assert (r.status_code, r.json()["version"]) == (200, 2)


def test_every_version_reads_back_byte_identical_after_later_uploads(
    client: httpx.Client,
) -> None:
    contents = [b"v1 text", bytes(range(256)) * 300, b"", b"\xff" * 10]
    aid = create(client, contents[0].decode())
    for data in contents[1:]:
        uploaded(client, aid, data)
    for number, data in enumerate(contents, 1):
        for base in ("", "/api/v1"):
            got = client.get(f"{base}/artifacts/{aid}/versions/{number}/download")
            assert got.status_code == 200 and got.content == data, number
            assert got.headers["etag"] == f'"{sha(data)}"'
    # the current download is the last version's
    assert client.get(f"/artifacts/{aid}/download").content == contents[-1]


def test_one_versions_record_inlines_its_text(server: AppServer, client: httpx.Client) -> None:
    aid = create(client, "# the first text", created_by="agent-7")
    uploaded(client, aid, b"\x89PNG binary", content_type="image/png")
    first = client.get(f"/artifacts/{aid}/versions/1")
    assert first.status_code == 200 and first.headers["etag"] == f'"{sha(b"# the first text")}"'
    body = first.json()
    assert body["content"] == "# the first text"
    assert (body["version"], body["is_current"], body["created_by"]) == (1, False, "agent-7")
    assert body["download_url"] == f"{server.url}/artifacts/{aid}/versions/1/download"
    assert (
        client.get(f"/artifacts/{aid}/versions/1?include_content=false").json()["content"] is None
    )
    second = client.get(f"/artifacts/{aid}/versions/2").json()
    assert (second["content"], second["is_current"], second["content_type"]) == (
        None,
        True,
        "image/png",
    )
    assert second["created_by"] is None
    r = client.get(f"/artifacts/{aid}/versions/1?include_content=maybe")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "include_content"]


def test_an_upload_names_who_wrote_its_version(client: httpx.Client) -> None:
    """`created_by` on an upload (a query parameter: the body is the bytes) is its version's,
    held to the same rules as the create's field; the artifact keeps its creator."""
    aid = create(client, "first", created_by="agent-1")
    uploaded(client, aid, b"second", created_by="agent-2")
    r = client.post(
        f"/artifacts/{aid}/upload", files={"file": ("c.txt", b"third")}, params={"created_by": "ci"}
    )
    assert r.status_code == 200, r.text
    versions = client.get(f"/artifacts/{aid}/versions").json()
    assert [(v["version"], v["created_by"]) for v in versions] == [
        (3, "ci"),
        (2, "agent-2"),
        (1, "agent-1"),
    ]
    assert client.get(f"/artifacts/{aid}").json()["created_by"] == "agent-1"
    for bad, kind in (("x" * 256, "string_too_long"), ("a\x00b", "string_nul")):
        r = upload(client, aid, b"refused", created_by=bad)
        assert r.status_code == 422, r.text
        item = r.json()["detail"][0]
        assert (item["loc"], item["type"]) == (["query", "created_by"], kind), item
    assert len(client.get(f"/artifacts/{aid}/versions").json()) == 3  # nothing stored


def test_the_versions_list_paginates_with_a_cursor(client: httpx.Client) -> None:
    aid = create(client, "0")
    for i in range(1, 7):
        uploaded(client, aid, b"%d" % i)
    seen: list[int] = []
    url: str | None = f"/artifacts/{aid[:10]}/versions?limit=3"
    pages = 0
    while url is not None:
        r = client.get(url)
        assert r.status_code == 200, r.text
        seen += [v["version"] for v in r.json()]
        pages += 1
        if "link" in r.headers:
            next_url = r.headers["link"].split(">")[0].lstrip("<")
            assert f"cursor={r.headers['x-next-cursor']}" in next_url
            url = next_url
        else:
            url = None
    assert seen == [7, 6, 5, 4, 3, 2, 1] and pages == 3
    for bad in (
        "nope",
        *(base64.urlsafe_b64encode(t).decode() for t in (b"v1:0", b"v1:01", b"v2:3")),
    ):
        r = client.get(f"/artifacts/{aid}/versions", params={"cursor": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "cursor_invalid", bad
    for limit, kind in (
        ("0", "greater_than_equal"),
        ("201", "less_than_equal"),
        ("x", "int_parsing"),
    ):
        r = client.get(f"/artifacts/{aid}/versions", params={"limit": limit})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == kind


def test_unknown_versions_and_malformed_numbers(client: httpx.Client) -> None:
    aid = create(client)
    for suffix in ("", "/download"):
        detail = problem(
            client.get(f"/artifacts/{aid}/versions/2{suffix}"), 404, "version_not_found"
        )
        assert aid in detail and "version 2" in detail
        r = client.head(f"/artifacts/{aid}/versions/2/download")
        assert (r.status_code, r.content) == (404, b"")
        for raw, kind in (
            ("0", "greater_than_equal"),
            ("-1", "greater_than_equal"),
            ("abc", "int_parsing"),
            ("1.5", "int_parsing"),
            ("2147483648", "less_than_equal"),
        ):
            r = client.get(f"/artifacts/{aid}/versions/{raw}{suffix}")
            assert r.status_code == 422, (raw, r.text)
            (item,) = r.json()["detail"]
            assert (item["type"], item["loc"], item["input"]) == (kind, ["path", "version"], raw)
            assert item["msg"].startswith("Input should be")
    unknown = str(uuid.uuid4())
    for path in (f"/artifacts/{unknown}/versions", f"/artifacts/{unknown}/versions/1"):
        problem(client.get(path), 404, "artifact_not_found")
    assert client.delete(f"/artifacts/{aid}").status_code == 200
    problem(client.get(f"/artifacts/{aid}/versions"), 404, "artifact_not_found")
    problem(client.get(f"/artifacts/{aid}/versions/1/download"), 404, "artifact_not_found")


# -- the download of a version ---------------------------------------------------------------


def test_a_versions_download_has_the_downloads_semantics(client: httpx.Client) -> None:
    data = bytes(range(256)) * 4
    aid = create(client)
    uploaded(client, aid, data, filename="räw data.bin")
    uploaded(client, aid, b"later", content_type="text/html")
    url = f"/artifacts/{aid}/versions/2/download"
    full = client.get(url)
    etag = f'"{sha(data)}"'
    assert full.status_code == 200 and full.content == data
    h = full.headers
    assert (h["etag"], h["content-type"], h["content-length"]) == (
        etag,
        "application/octet-stream",
        str(len(data)),
    )
    assert (
        h["repr-digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
    )
    assert h["x-content-type-options"] == "nosniff" and h["content-security-policy"] == "sandbox"
    assert h["accept-ranges"] == "bytes"
    assert h["content-disposition"] == (
        "attachment; filename=\"r_w data.bin\"; filename*=UTF-8''r%C3%A4w%20data.bin"
    )
    # the current download has the current name and type: the version's are its own
    assert client.get(f"/artifacts/{aid}/download").headers["content-type"] == "text/html"
    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = client.get(url, headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == data[-5:]
    stale = client.get(url, headers={"Range": "bytes=0-0", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data
    unsatisfiable = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(data)}"
    cached = client.get(url, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    head = client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(data)) and head.headers["etag"] == etag
    head_range = client.head(url, headers={"Range": "bytes=0-9"})
    assert head_range.status_code == 206 and head_range.headers["content-length"] == "10"


def test_versions_routes_by_prefix_and_under_api_v1(client: httpx.Client) -> None:
    aid = create(client, "one")
    uploaded(client, aid, b"two")
    for ref in (aid[:8], aid[:12], aid.upper()):
        for base in ("/artifacts", "/api/v1/artifacts"):
            assert [v["version"] for v in client.get(f"{base}/{ref}/versions").json()] == [2, 1]
            assert client.get(f"{base}/{ref}/versions/1").json()["artifact_id"] == aid
            assert client.get(f"{base}/{ref}/versions/1/download").content == b"one"
    detail = problem(client.get(f"/artifacts/{aid[:7]}/versions"), 404, "artifact_not_found")
    assert "too short" in detail


def test_versions_need_the_read_scope(tmp_path: Path, database_url: str) -> None:
    with linked_server(start_app, tmp_path, database_url) as (srv, admin, other, aid, writer):
        with srv.client(headers={"Authorization": f"Bearer {writer}"}) as creator:
            for path in ("/versions", "/versions/1", "/versions/1/download"):
                problem(creator.get(f"/artifacts/{aid}{path}"), 403, "forbidden")
        with srv.client() as anonymous:
            assert anonymous.get(f"/artifacts/{aid}/versions").status_code == 401
        # another tenant's artifact is unknown
        problem(other.get(f"/artifacts/{aid}/versions"), 404, "artifact_not_found")
        assert admin.get(f"/artifacts/{aid}/versions").status_code == 200


# -- signed links to a version ---------------------------------------------------------------


def anonymous_get(srv: AppServer, url: str, method: str = "GET", **kw: Any) -> httpx.Response:
    parts = urlsplit(url)
    with srv.client() as anonymous:
        return anonymous.request(method, f"{parts.path}?{parts.query}", **kw)


def test_a_link_naming_a_version_keeps_serving_it_after_uploads(
    tmp_path: Path, database_url: str
) -> None:
    with linked_server(start_app, tmp_path, database_url) as (srv, a, _other, aid, _):
        first = a.get(f"/artifacts/{aid}/download").content
        made = a.post(f"/artifacts/{aid[:8]}/download-url", params={"version": 1})
        assert made.status_code == 200, made.text
        link = made.json()
        assert link["version"] == 1 and link["method"] == "GET"
        assert urlsplit(link["url"]).path == f"/artifacts/{aid}/versions/1/download"
        current = a.post(f"/artifacts/{aid}/download-url").json()
        assert "version" not in current
        assert anonymous_get(srv, link["url"]).content == first
        uploaded(a, aid, b"a newer version")
        # the version link still serves version 1; the link to the current bytes is void
        got = anonymous_get(srv, link["url"])
        assert got.status_code == 200 and got.content == first
        head = anonymous_get(srv, link["url"], "HEAD")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(first))
        ranged = anonymous_get(srv, link["url"], headers={"Range": "bytes=0-3"})
        assert ranged.status_code == 206 and ranged.content == first[:4]
        problem(anonymous_get(srv, current["url"]), 403, "invalid_link")
        # the signature opens that version only: not another version, not the current download
        query = urlsplit(link["url"]).query
        for path in (
            f"/artifacts/{aid}/versions/2/download",
            f"/artifacts/{aid}/download",
            f"/artifacts/{aid}/versions/01/download",
            f"/artifacts/{aid}/versions/x/download",
            f"/artifacts/{aid[:8]}/versions/1/download",
        ):
            problem(anonymous_get(srv, f"{path}?{query}"), 403, "invalid_link")
        # a link to the current version made now keeps working after the next upload
        v2 = a.post(f"/artifacts/{aid}/download-url", params={"version": 2}).json()
        uploaded(a, aid, b"a third")
        assert anonymous_get(srv, v2["url"]).content == b"a newer version"
        # unknown version: 404, and 422 for a bad number
        problem(
            a.post(f"/artifacts/{aid}/download-url", params={"version": 9}),
            404,
            "version_not_found",
        )
        bad = a.post(f"/artifacts/{aid}/download-url", params={"version": 0})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "version"]
        # deleting the artifact voids the version links
        assert a.delete(f"/artifacts/{aid}").status_code == 200
        problem(anonymous_get(srv, link["url"]), 403, "invalid_link")


# -- conditional uploads ---------------------------------------------------------------------


def test_if_match_the_current_etag_uploads(client: httpx.Client) -> None:
    aid = create(client, "base")
    etag = client.get(f"/artifacts/{aid}/download").headers["etag"]
    assert client.get(f"/artifacts/{aid}").headers["etag"] == etag
    r = upload(client, aid, b"next", headers={"If-Match": etag})
    assert r.status_code == 200, r.text
    r = upload(
        client, aid, b"third", headers={"If-Match": f'"{"0" * 64}", {etag}, "{sha(b"next")}"'}
    )
    assert r.status_code == 200, r.text
    r = upload(client, aid, b"fourth", headers={"If-Match": "*"})
    assert r.status_code == 200, r.text
    assert client.get(f"/artifacts/{aid}").json()["version"] == 4
    # an upload answers its version and its ETag, the next conditional upload's If-Match
    assert (r.json()["version"], r.headers["etag"]) == (4, f'"{sha(b"fourth")}"')
    r = upload(client, aid, b"fifth", headers={"If-Match": r.headers["etag"]})
    assert (r.status_code, r.json()["version"]) == (200, 5)


def test_if_match_a_stale_etag_is_412_and_stores_nothing(
    server: AppServer, client: httpx.Client, database_url: str
) -> None:
    aid = create(client, "base")
    old = f'"{sha(b"base")}"'
    theirs = b"someone else's"
    current = f'"{sha(theirs)}"'
    uploaded(client, aid, theirs)
    versions, blobs = (
        count_rows(database_url, "artifact_versions"),
        count_rows(database_url, "blobs"),
    )
    for if_match in (old, f"W/{old}", f"W/{current}", '""', "", " , "):
        for form in ("raw", "multipart"):
            if form == "raw":
                r = upload(client, aid, b"mine", headers={"If-Match": if_match})
            else:
                r = client.post(
                    f"/artifacts/{aid}/upload",
                    files={"file": ("m.txt", b"mine", "text/plain")},
                    headers={"If-Match": if_match},
                )
            detail = problem(r, 412, "precondition_failed")
            assert "another version" in detail
            assert r.headers["etag"] == current
    assert client.get(f"/artifacts/{aid}/download").content == b"someone else's"
    assert count_rows(database_url, "artifact_versions") == versions
    assert count_rows(database_url, "blobs") == blobs
    assert staged_files(server) == []
    # malformed: 422 in the contract's shape
    for bad in ("abc", '"unterminated', "*, *"):
        r = upload(client, aid, b"mine", headers={"If-Match": bad})
        assert r.status_code == 422, (bad, r.text)
        (item,) = r.json()["detail"]
        assert (item["loc"], item["type"], item["input"]) == (
            ["header", "if-match"],
            "entity_tag",
            bad,
        )
    # an unknown artifact is 404 whatever the If-Match
    problem(
        upload(client, str(uuid.uuid4()), b"x", headers={"If-Match": "*"}),
        404,
        "artifact_not_found",
    )


def test_a_keyed_conditional_upload_replays_its_first_answer(client: httpx.Client) -> None:
    aid = create(client, "base")
    etag = f'"{sha(b"base")}"'
    headers = {"If-Match": etag, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = upload(client, aid, b"once", headers=headers)
    assert first.status_code == 200, first.text
    # the If-Match is stale now, but the retry is the same request: the first answer again
    again = upload(client, aid, b"once", headers=headers)
    assert (again.status_code, again.headers["idempotent-replayed"]) == (200, "true")
    assert again.content == first.content
    assert client.get(f"/artifacts/{aid}").json()["version"] == 2
    # another If-Match (or none) with the key is another request
    other = {**headers, "If-Match": "*"}
    problem(upload(client, aid, b"once", headers=other), 422, "idempotency_key_reused")
    bare = {"Idempotency-Key": headers["Idempotency-Key"]}
    problem(upload(client, aid, b"once", headers=bare), 422, "idempotency_key_reused")
    # a 412 stores no answer: the key stays free
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    problem(
        upload(client, aid, b"late", headers={**key, "If-Match": etag}), 412, "precondition_failed"
    )
    fresh = upload(client, aid, b"late", headers={**key, "If-Match": f'"{sha(b"once")}"'})
    assert fresh.status_code == 200 and "idempotent-replayed" not in fresh.headers


@pytest.fixture
async def asgi(tmp_path: Path, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this task (its lifespan entered here) and an AsyncClient on it."""
    from storage.db.migrate import upgrade

    settings = Settings(data_dir=tmp_path / "asgi", database_url=database_url, gc_interval=0)
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


class Gate:
    """Bodies that send nothing until `count` of them have been asked for their bytes: the app
    reads an upload's body only after its early If-Match check, so every racer has passed it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.all_in = asyncio.Event()

    async def body(self, data: bytes) -> AsyncIterator[bytes]:
        self.count -= 1
        if self.count == 0:
            self.all_in.set()
        await self.all_in.wait()
        yield data


@pytest.mark.anyio
async def test_two_racing_conditional_uploads_one_wins(asgi: httpx.AsyncClient) -> None:
    r = await asgi.post(
        "/artifacts",
        json={"workflow_id": "wf-race", "artifact_type": "text", "title": "t", "content": "base"},
    )
    aid = r.json()["id"]
    etag = f'"{sha(b"base")}"'
    for round_ in range(3):  # three rounds: each starts from the winner of the last
        gate = Gate(2)

        async def put(data: bytes, gate: Gate = gate, tag: str = etag) -> httpx.Response:
            return await asgi.post(
                f"/artifacts/{aid}/upload",
                content=gate.body(data),
                headers={"content-type": "text/plain", "If-Match": tag},
            )

        mine, theirs = b"left %d" % round_, b"right %d" % round_
        left, right = await asyncio.gather(put(mine), put(theirs))
        statuses = sorted([left.status_code, right.status_code])
        assert statuses == [200, 412], (left.text, right.text)
        winner = left if left.status_code == 200 else right
        loser = right if winner is left else left
        assert loser.json()["code"] == "precondition_failed"
        assert loser.headers["etag"] == f'"{winner.json()["content_hash"]}"'
        etag = loser.headers["etag"]
        # the loser's bytes were stored before its transaction failed: no row names them (GC
        # reclaims the file), and no staging file is left
        service = asgi.app.state.service  # type: ignore[attr-defined]
        lost = sha(theirs if loser is right else mine)
        rows = await service.db.run_read(
            lambda conn, lost=lost: conn.execute(
                sa.select(blobs.c.digest).where(blobs.c.digest == lost)
            ).all()
        )
        assert rows == []
        assert not any(p.is_file() for p in (service.blobs.root / "tmp").rglob("*"))
    versions = (await asgi.get(f"/artifacts/{aid}/versions")).json()
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    # without If-Match the last writer wins and both versions exist
    gate = Gate(2)

    async def plain(data: bytes) -> httpx.Response:
        return await asgi.post(
            f"/artifacts/{aid}/upload",
            content=gate.body(data),
            headers={"content-type": "text/plain"},
        )

    a, b = await asyncio.gather(plain(b"A"), plain(b"B"))
    assert (a.status_code, b.status_code) == (200, 200)
    versions = (await asgi.get(f"/artifacts/{aid}/versions")).json()
    assert [v["version"] for v in versions][:2] == [6, 5]
    assert {v["content_hash"] for v in versions[:2]} == {sha(b"A"), sha(b"B")}
    current = (await asgi.get(f"/artifacts/{aid}")).json()
    assert current["content_hash"] == versions[0]["content_hash"]


# -- lineage and exports -----------------------------------------------------------------------


def test_lineage_edges_pin_the_parents_version(client: httpx.Client) -> None:
    parent = create(client, "parent v1")
    uploaded(client, parent, b"parent v2")
    child = create(client, "child", derived_from=[parent])
    uploaded(client, parent, b"parent v3")
    edges = client.get(f"/artifacts/{child}/lineage", params={"direction": "up"}).json()["edges"]
    assert edges == [
        {"parent": parent, "child": child, "parent_hash": sha(b"parent v2"), "parent_version": 2}
    ]
    pinned = client.get(f"/artifacts/{parent}/versions/{edges[0]['parent_version']}/download")
    assert pinned.content == b"parent v2" and pinned.headers["etag"] == f'"{sha(b"parent v2")}"'
    assert client.get(f"/artifacts/{parent}/download").content == b"parent v3"


def test_an_export_names_each_files_version(client: httpx.Client) -> None:
    wf = f"wf-export-{uuid.uuid4().hex[:8]}"
    parent = create(client, "p1", workflow_id=wf, phase_id="a", title="parent")
    uploaded(client, parent, b"p2", content_type="text/plain")
    child = create(client, "c1", workflow_id=wf, phase_id="a", title="child", derived_from=[parent])
    uploaded(client, parent, b"p3", content_type="text/plain")
    r = client.get(f"/store/workflows/{wf}/export", params={"format": "zip"})
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        files = {f["artifact_id"]: f for f in manifest["files"]}
        assert archive.read(files[parent]["path"]) == b"p3"
    assert (files[parent]["version"], files[parent]["sha256"]) == (3, sha(b"p3"))
    assert files[child]["version"] == 1
    assert files[child]["derived_from"] == [
        {"id": parent, "content_hash": sha(b"p2"), "version": 2}
    ]
