"""Holds tests/support/crownest.py to the official `crownest` SDK (0.1.1) and to the CrowNest
docs: the SDK pointed at the fake must behave as against the real service, the importer's
client must ask what the SDK asks, and every scripted fault must do what the fake's docstring
promises."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from crownest import AsyncCrowNest, CrowNest, CrowNestApiError

from app.imports.crownest import CrowNestClient
from tests.support.crownest import (  # noqa: F401  (crownest_fake is a fixture)
    FORBIDDEN_API_KEY,
    FakeCrowNest,
    FakeState,
    Fault,
    crownest_fake,
    running_fake,
)

pytestmark = pytest.mark.timeout(30)

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
REQUIRED = ["id", "orgId", "projectId", "sandboxId", "name", "objectKey", "sizeBytes", "createdAt"]
OPTIONAL = ["sourcePath", "contentType", "deletedAt", "retentionExpiresAt"]


@pytest.fixture
def fake(crownest_fake: FakeCrowNest) -> FakeCrowNest:  # noqa: F811
    return crownest_fake


@pytest.fixture
def sdk(fake: FakeCrowNest) -> Iterator[CrowNest]:
    with CrowNest(api_key=fake.api_key, base_url=fake.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def http(fake: FakeCrowNest) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, headers=fake.auth(), timeout=10) as client:
        yield client


def check_shape(rec: dict[str, Any]) -> None:
    assert set(REQUIRED) <= set(rec) <= set(REQUIRED + OPTIONAL)
    assert None not in rec.values()
    assert rec["id"].startswith("art_")
    assert rec["orgId"].startswith("org_")
    assert rec["projectId"].startswith("prj_")
    assert rec["sandboxId"].startswith("sbx_")
    assert isinstance(rec["sizeBytes"], int)
    for key in ("createdAt", "deletedAt", "retentionExpiresAt"):
        if key in rec:
            assert TS.match(rec[key]), rec[key]


def walk(http: httpx.Client, sbx: str, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """Follow nextCursor to the end, as the importer must."""
    items: list[dict] = []
    cursors: list[str] = []
    params: dict[str, Any] = {} if limit is None else {"limit": limit}
    while True:
        r = http.get(f"/v1/sandboxes/{sbx}/artifacts", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) <= {"data", "hasMore", "nextCursor"}
        items += body["data"]
        if not body["hasMore"]:
            assert "nextCursor" not in body
            return items, cursors
        cursors.append(body["nextCursor"])
        params = {**params, "cursor": body["nextCursor"]}


# --------------------------------------------------------------------------------------------
# The official SDK against the fake
# --------------------------------------------------------------------------------------------


def test_sdk_list_returns_the_first_page_only_newest_first(fake, sdk):
    sbx = fake.state.add_sandbox()
    fake.state.add_artifacts(sbx.id, 120, kind="mixed")
    page = sdk.artifacts.list(sbx.id)
    assert page == fake.state.listing(sbx.id)[:50]
    created = [a["createdAt"] for a in page]
    assert created == sorted(created, reverse=True)
    for rec in page:
        check_shape(rec)
    (req,) = fake.state.requests_to("list")
    assert req.query == ""  # the SDK sends neither limit nor cursor


def test_sdk_get_exact_artifact_shape(fake, sdk):
    st = fake.state
    sbx = st.add_sandbox()
    text = st.add_artifact(sbx.id, b"hello", name="input.txt")
    bare = st.add_artifact(sbx.id, b"\x00\x01", name="noext", content_type=None, source_path=None)
    gone = st.add_artifact(sbx.id, b"x", name="a.json", deleted=True)
    kept = st.add_artifact(
        sbx.id, b"y", name="b.bin", retention_expires_at="2026-07-09T15:30:00.000Z"
    )

    got = sdk.artifacts.get(text.id)
    assert list(got) == [
        "id",
        "orgId",
        "projectId",
        "sandboxId",
        "name",
        "sourcePath",
        "objectKey",
        "sizeBytes",
        "contentType",
        "createdAt",
    ]
    assert got["sourcePath"] == "/workspace/input.txt"
    assert got["sizeBytes"] == 5 and got["contentType"] == "text/plain"
    assert got["objectKey"].startswith("orgs/org_test/projects/prj_test/objects/obj_")
    assert got["createdAt"] >= "2026-06-09T15:30:00.000Z"
    for art in (text, bare, gone, kept):
        check_shape(sdk.artifacts.get(art.id))
    assert "contentType" not in sdk.artifacts.get(bare.id)
    assert "sourcePath" not in sdk.artifacts.get(bare.id)
    assert "deletedAt" in sdk.artifacts.get(gone.id)
    assert sdk.artifacts.get(kept.id)["retentionExpiresAt"] == "2026-07-09T15:30:00.000Z"


def test_sdk_download_bytes_and_headers(fake, sdk, http):
    st = fake.state
    sbx = st.add_sandbox()
    text, binary, bare = (
        st.add_artifacts(sbx.id, 1, kind=k)[0] for k in ("text", "binary", "no_content_type")
    )
    big = st.add_artifact(sbx.id, bytes(range(256)) * 1024, name="big.bin")  # 256 KiB, chunked
    for art in (text, binary, bare, big):
        assert sdk.artifacts.download(art.id) == art.data
    r = http.get(f"/v1/artifacts/{binary.id}/download")
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(binary.size_bytes)
    assert http.get(f"/v1/artifacts/{text.id}/download").headers["content-type"] == "text/plain"
    assert (
        http.get(f"/v1/artifacts/{bare.id}/download").headers["content-type"]
        == "application/octet-stream"
    )
    dl = [r for r in st.requests_to("download") if r.headers.get("accept")]
    assert dl[0].headers["accept"] == "application/octet-stream"  # what the SDK sends


def test_the_importer_downloads_exactly_as_the_sdk_does(fake, sdk):
    """Our client and the SDK's download() send the same request to the API host's own route
    (the importer streams what the SDK buffers) and get the same bytes."""
    st = fake.state
    sbx = st.add_sandbox()
    art = st.add_artifact(sbx.id, bytes(range(256)) * 8192, name="two-mib.bin")  # > one chunk

    async def ours() -> tuple[bytes, int]:
        async with CrowNestClient(fake.base_url, fake.api_key) as client:
            async with client.open_download(art.id) as chunks:
                pieces = [chunk async for chunk in chunks]
        return b"".join(pieces), len(pieces)

    assert sdk.artifacts.download(art.id) == art.data
    data, pieces = asyncio.run(ours())
    assert data == art.data and pieces >= 2  # streamed, not one buffered body
    theirs, mine = st.requests_to("download")
    for r in (theirs, mine):
        assert (r.status, r.foreign, r.query) == (200, False, "")
    wire = ("method", "path", "authorization", "host", "server")
    assert [getattr(mine, k) for k in wire] == [getattr(theirs, k) for k in wire]
    assert mine.headers["accept"] == theirs.headers["accept"] == "application/octet-stream"
    assert st.requests_to("download_url") == []


def test_sdk_download_url_points_at_the_fake_and_works(fake, sdk):
    sbx = fake.state.add_sandbox()
    art = fake.state.add_artifact(sbx.id, b"payload", name="p.txt")
    info = sdk.artifacts.download_url(art.id)
    assert set(info) == {"url", "method", "headers", "authMode"}
    assert info["method"] == "GET" and info["authMode"] == "api_key"
    assert info["headers"] == {"Authorization": f"Bearer {fake.api_key}"}
    url = urlsplit(info["url"])
    assert f"{url.scheme}://{url.netloc}" == fake.base_url
    assert url.path == f"/v1/artifacts/{art.id}/download"
    r = httpx.get(info["url"], headers=info["headers"])
    assert r.status_code == 200 and r.content == b"payload"
    # the signature is checked when present
    bad = info["url"].replace("signature=", "signature=0")
    r = httpx.get(bad, headers=info["headers"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert fake.state.leaks() == []


def test_sdk_delete_is_idempotent_by_state(fake, sdk):
    sbx = fake.state.add_sandbox()
    art = fake.state.add_artifact(sbx.id, b"bye", name="bye.txt")
    first = sdk.artifacts.delete(art.id)
    assert TS.match(first["deletedAt"])
    assert sdk.artifacts.delete(art.id) == first  # same record, same deletedAt
    assert sdk.artifacts.get(art.id) == first
    assert sdk.artifacts.list(sbx.id) == [first]  # deleted ones are listed, with deletedAt
    for call in (sdk.artifacts.download, sdk.artifacts.download_url):
        with pytest.raises(CrowNestApiError) as exc:
            call(art.id)
        assert (exc.value.status, exc.value.code) == (404, "not_found")
    with pytest.raises(CrowNestApiError) as exc:
        sdk.artifacts.delete("art_missing")
    assert (exc.value.status, exc.value.code) == (404, "not_found")


def test_sdk_create_from_workspace_and_its_errors(fake, sdk):
    st = fake.state
    sbx = st.add_sandbox(files={"/workspace/out/report.json": b'{"ok": true}'})
    st.add_file(sbx.id, "model.bin", b"\x00" * 10)
    art = sdk.artifacts.create(sbx.id, path="/workspace/out/report.json")
    check_shape(art)
    assert art["name"] == "report.json" and art["sourcePath"] == "/workspace/out/report.json"
    assert art["contentType"] == "application/json" and art["sizeBytes"] == 12
    assert sdk.artifacts.download(art["id"]) == b'{"ok": true}'
    named = sdk.artifacts.create(sbx.id, path="model.bin", name="model")  # relative path
    assert named["name"] == "model" and named["sourcePath"] == "/workspace/model.bin"
    assert "contentType" not in named  # not guessable from "model"
    assert [a["id"] for a in sdk.artifacts.list(sbx.id)] == [named["id"], art["id"]]
    assert fake.state.requests_to("create")[0].headers["idempotency-key"]  # SDK sends one

    cases = [
        (sbx.id, "/etc/passwd", 400, "path_outside_workspace"),
        (sbx.id, "../secret", 400, "path_outside_workspace"),
        (sbx.id, "/workspace/../etc/x", 400, "path_outside_workspace"),
        (sbx.id, "/workspace/nope.txt", 404, "file_not_found"),
        ("sbx_unknown", "/workspace/x", 404, "not_found"),
    ]
    for sandbox_id, path, status, code in cases:
        with pytest.raises(CrowNestApiError) as exc:
            sdk.artifacts.create(sandbox_id, path=path)
        assert (exc.value.status, exc.value.code) == (status, code), path
    st.destroy_sandbox(sbx.id)
    with pytest.raises(CrowNestApiError) as exc:
        sdk.artifacts.create(sbx.id, path="model.bin")
    assert (exc.value.status, exc.value.code) == (409, "sandbox_destroyed")


def test_create_idempotency_key_replays_and_conflicts(fake, http):
    sbx = fake.state.add_sandbox(files={"/workspace/a.txt": b"a", "/workspace/b.txt": b"b"})
    url = f"/v1/sandboxes/{sbx.id}/artifacts"
    one = http.post(url, json={"path": "a.txt"}, headers={"Idempotency-Key": "k1"})
    two = http.post(url, json={"path": "a.txt"}, headers={"Idempotency-Key": "k1"})
    assert one.status_code == two.status_code == 201
    assert one.json() == two.json()
    assert len(fake.state.listing(sbx.id)) == 1
    clash = http.post(url, json={"path": "b.txt"}, headers={"Idempotency-Key": "k1"})
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "idempotency_key_reused"
    bad = http.post(url, content=b"not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_sdk_artifacts_outlive_their_sandbox(fake, sdk):
    sbx = fake.state.add_sandbox(files={"/workspace/r.txt": b"result"})
    art = sdk.artifacts.create(sbx.id, path="r.txt")
    handle = sdk.sandboxes.get(sbx.id)
    assert handle.id == sbx.id and handle["status"] == "running"
    assert handle.artifacts.list() == [art]  # the SandboxHandle sub-client
    killed = sdk.sandboxes.kill(sbx.id)
    assert killed["status"] == "destroyed"
    assert sdk.artifacts.list(sbx.id) == [art]
    assert sdk.artifacts.get(art["id"]) == art
    assert sdk.artifacts.download(art["id"]) == b"result"
    assert httpx.get(**_dl(sdk.artifacts.download_url(art["id"]))).content == b"result"


def _dl(info: dict[str, Any]) -> dict[str, Any]:
    return {"url": info["url"], "headers": info["headers"]}


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        ("unknown_key", 401, "invalid_api_key"),
        ("forbidden_key", 403, "forbidden"),
        ("org_bound_key", 403, "forbidden"),
        ("unknown_artifact", 404, "not_found"),
        ("rate_limited", 429, "rate_limited"),
        ("server_error", 500, "internal_error"),
        ("unavailable", 503, "service_unavailable"),
        ("html_502", 502, "invalid_error_response"),
    ],
)
def test_sdk_error_mapping(fake, setup, status, code):
    st = fake.state
    sbx = st.add_sandbox()
    art = st.add_artifact(sbx.id, b"x", name="x.txt")
    key, art_id = fake.api_key, art.id
    if setup == "unknown_key":
        key = "cn_test_nobody"
    elif setup == "forbidden_key":
        key = FORBIDDEN_API_KEY
    elif setup == "org_bound_key":
        key = st.add_api_key("cn_test_other_org", org_id="org_other").key
    elif setup == "unknown_artifact":
        art_id = "art_doesnotexist"
    elif setup == "rate_limited":
        st.inject("get", Fault.rate_limited(retry_after=3))
    elif setup == "server_error":
        st.inject("get", Fault.server_error())
    elif setup == "unavailable":
        st.inject("get", Fault.unavailable())
    elif setup == "html_502":
        st.inject("get", Fault.raw(502, b"<html>Bad Gateway</html>"))
    with CrowNest(api_key=key, base_url=fake.base_url, timeout=10) as client:
        with pytest.raises(CrowNestApiError) as exc:
            client.artifacts.get(art_id)
    assert (exc.value.status, exc.value.code) == (status, code)
    assert str(exc.value)  # the message
    assert st.pending_faults() == {}


def test_async_sdk_against_the_fake(fake):
    st = fake.state
    sbx = st.add_sandbox(files={"/workspace/w.txt": b"written"})
    arts = st.add_artifacts(sbx.id, 60, kind="mixed")
    live = next(a for a in reversed(arts) if a.deleted_at is None)

    async def run() -> None:
        async with AsyncCrowNest(api_key=fake.api_key, base_url=fake.base_url, timeout=10) as c:
            page = await c.artifacts.list(sbx.id)
            assert page == st.listing(sbx.id)[:50]
            assert await c.artifacts.get(live.id) == live.to_json()
            assert await c.artifacts.download(live.id) == live.data
            info = await c.artifacts.download_url(live.id)
            assert info["url"].startswith(fake.base_url + "/")
            created = await c.artifacts.create(sbx.id, path="w.txt")
            assert await c.artifacts.download(created["id"]) == b"written"
            deleted = await c.artifacts.delete(created["id"])
            assert "deletedAt" in deleted and await c.artifacts.delete(created["id"]) == deleted
            st.inject("list", Fault.rate_limited())
            with pytest.raises(CrowNestApiError) as exc:
                await c.artifacts.list(sbx.id)
            assert (exc.value.status, exc.value.code) == (429, "rate_limited")
            with pytest.raises(CrowNestApiError) as exc:
                await c.artifacts.get("art_nope")
            assert (exc.value.status, exc.value.code) == (404, "not_found")
        async with AsyncCrowNest(api_key="cn_bad", base_url=fake.base_url, timeout=10) as c:
            with pytest.raises(CrowNestApiError) as exc:
                await c.artifacts.list(sbx.id)
            assert (exc.value.status, exc.value.code) == (401, "invalid_api_key")

    asyncio.run(run())


# --------------------------------------------------------------------------------------------
# Auth, routing, error bodies (direct HTTP)
# --------------------------------------------------------------------------------------------


def test_auth_failures_and_error_body_shape(fake):
    sbx = fake.state.add_sandbox()
    url = f"{fake.base_url}/v1/sandboxes/{sbx.id}/artifacts"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": fake.api_key}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
        assert set(r.json()["error"]) <= {"code", "message", "details"}
    r = httpx.get(url, headers=fake.auth(FORBIDDEN_API_KEY))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    reader = fake.state.add_api_key("cn_test_reader", scopes={"artifact:read"}).key
    art = fake.state.add_artifact(sbx.id)
    assert httpx.get(url, headers=fake.auth(reader)).status_code == 200
    r = httpx.delete(f"{fake.base_url}/v1/artifacts/{art.id}", headers=fake.auth(reader))
    assert r.status_code == 403 and r.json()["error"]["details"] == {
        "requiredScopes": ["artifact:delete"]
    }


def test_unknown_route_and_method(http):
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.put("/v1/artifacts/art_x")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# --------------------------------------------------------------------------------------------
# Pagination
# --------------------------------------------------------------------------------------------


def test_pagination_returns_everything_exactly_once_newest_first(fake, http):
    st = fake.state
    sbx = st.add_sandbox()
    other = st.add_sandbox()
    st.add_artifacts(sbx.id, 330, kind="mixed")
    for i in range(25):  # ties on createdAt are broken by id
        st.add_artifact(
            sbx.id, f"tie {i}", name=f"tie-{i}.txt", created_at="2026-06-10T00:00:00.000Z"
        )
    st.add_artifacts(other.id, 7)
    expected = st.listing(sbx.id)
    assert len(expected) == 355
    for limit in (None, 100, 37):
        items, cursors = walk(http, sbx.id, limit)
        assert items == expected
        assert len({a["id"] for a in items}) == 355
        assert len(set(cursors)) == len(cursors)
        per_page = limit or 50
        assert len(cursors) == -(-355 // per_page) - 1
        for c in cursors:  # opaque: no ids in the clear
            assert not any(a["id"] in c for a in items)
    assert sum(1 for a in expected if "deletedAt" in a) > 0
    assert walk(http, other.id)[0] == st.listing(other.id)


def test_pagination_is_keyset_stable_when_artifacts_arrive_midway(fake, http):
    st = fake.state
    sbx = st.add_sandbox()
    st.add_artifacts(sbx.id, 10)
    before = st.listing(sbx.id)
    r1 = http.get(f"/v1/sandboxes/{sbx.id}/artifacts", params={"limit": 4}).json()
    st.add_artifacts(sbx.id, 3)  # newer: they belong before the cursor, not on later pages
    rest: list[dict] = []
    cursor = r1["nextCursor"]
    while cursor:
        page = http.get(
            f"/v1/sandboxes/{sbx.id}/artifacts", params={"limit": 4, "cursor": cursor}
        ).json()
        rest += page["data"]
        cursor = page.get("nextCursor")
    assert r1["data"] + rest == before


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "abc"},
        {"cursor": "garbage"},
        {"cursor": "cur_!!!"},
        {"cursor": "cur_" + base64.urlsafe_b64encode(b"[1]").decode()},
    ],
)
def test_pagination_rejects_bad_limit_and_cursor(fake, http, params):
    sbx = fake.state.add_sandbox()
    r = http.get(f"/v1/sandboxes/{sbx.id}/artifacts", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["details"]["field"] in {"limit", "cursor"}


def test_pagination_limits_cursor_scope_and_unknown_sandbox(fake, http):
    st = fake.state
    a, b = st.add_sandbox(), st.add_sandbox(destroyed=True)
    st.add_artifacts(a.id, 150)
    st.add_artifacts(b.id, 3)
    full = http.get(f"/v1/sandboxes/{a.id}/artifacts", params={"limit": 100}).json()
    assert len(full["data"]) == 100 and full["hasMore"]
    assert len(http.get(f"/v1/sandboxes/{a.id}/artifacts").json()["data"]) == 50
    r = http.get(f"/v1/sandboxes/{b.id}/artifacts", params={"cursor": full["nextCursor"]})
    assert r.status_code == 400  # a cursor belongs to its sandbox
    assert len(http.get(f"/v1/sandboxes/{b.id}/artifacts").json()["data"]) == 3  # destroyed ok
    r = http.get("/v1/sandboxes/sbx_nope/artifacts")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    empty = st.add_sandbox()
    assert http.get(f"/v1/sandboxes/{empty.id}/artifacts").json() == {
        "data": [],
        "hasMore": False,
    }


# --------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------


def test_faults_are_consumed_in_order_per_route(fake, http):
    st = fake.state
    sbx = st.add_sandbox()
    st.add_artifacts(sbx.id, 2)
    st.inject(
        "list",
        Fault.rate_limited(retry_after=2),
        Fault.unavailable(retry_after=1),
        Fault.server_error(),
        Fault.passthrough(),
        Fault.rate_limited(retry_after=None),
    )
    url = f"/v1/sandboxes/{sbx.id}/artifacts"
    got = [http.get(url) for _ in range(6)]
    assert [r.status_code for r in got] == [429, 503, 500, 200, 429, 200]
    assert got[0].headers["retry-after"] == "2"
    assert got[1].headers["retry-after"] == "1"
    assert "retry-after" not in got[2].headers and "retry-after" not in got[4].headers
    assert [r.json()["error"]["code"] for r in got if r.status_code != 200] == [
        "rate_limited",
        "service_unavailable",
        "internal_error",
        "rate_limited",
    ]
    assert [r.fault for r in st.requests_to("list")] == [
        "error",
        "error",
        "error",
        "passthrough",
        "error",
        None,
    ]
    assert st.pending_faults() == {}


def test_faults_per_artifact_take_precedence_and_spare_others(fake, http):
    st = fake.state
    sbx = st.add_sandbox()
    a, b = st.add_artifacts(sbx.id, 2)
    st.inject("download", Fault.server_error(503), artifact_id=a.id)
    st.inject("download", Fault.server_error(500))
    assert http.get(f"/v1/artifacts/{b.id}/download").status_code == 500  # route-wide
    assert http.get(f"/v1/artifacts/{b.id}/download").status_code == 200
    assert http.get(f"/v1/artifacts/{a.id}/download").status_code == 503  # its own
    assert http.get(f"/v1/artifacts/{a.id}/download").status_code == 200
    st.inject("get", Fault.server_error())
    assert httpx.get(f"{fake.base_url}/v1/artifacts/{a.id}").status_code == 401  # no key
    assert list(st.pending_faults()) == [("get", None)]  # auth failures consume nothing
    st.clear_faults()
    assert st.pending_faults() == {}
    with pytest.raises(ValueError):
        st.inject("nope", Fault.server_error())


def test_fault_drop_mid_body(fake, http):
    sbx = fake.state.add_sandbox()
    art = fake.state.add_artifact(sbx.id, bytes(range(256)) * 40, name="d.bin")
    fake.state.inject("download", Fault.drop(after_bytes=1000), Fault.drop(after_bytes=0))
    for expected_prefix in (1000, 0):
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("GET", f"/v1/artifacts/{art.id}/download") as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(art.size_bytes)  # the full length
                for chunk in r.iter_raw():
                    received += chunk
        assert received == art.data[:expected_prefix]
    assert http.get(f"/v1/artifacts/{art.id}/download").content == art.data  # recovers


def test_fault_slow_body_and_delayed_headers(fake, http):
    sbx = fake.state.add_sandbox()
    art = fake.state.add_artifact(sbx.id, bytes(range(256)), name="s.bin")
    fake.state.inject("download", Fault.slow(chunk_size=64, delay=0.05))
    t0 = time.monotonic()
    assert http.get(f"/v1/artifacts/{art.id}/download").content == art.data
    assert time.monotonic() - t0 >= 0.2  # 4 chunks, a pause before each
    # headers held back past the client's read timeout, then the server is still healthy
    fake.state.inject("get", Fault.delayed(1.0))
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"/v1/artifacts/{art.id}", timeout=0.2)
    assert http.get(f"/v1/artifacts/{art.id}").status_code == 200
    # a slow body cut off by a read timeout
    fake.state.inject("download", Fault.slow(chunk_size=16, delay=0.5))
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"/v1/artifacts/{art.id}/download", timeout=0.2)


def test_fault_body_length_differs_from_size_bytes(fake, http, sdk):
    st = fake.state
    sbx = st.add_sandbox()
    art = st.add_artifact(sbx.id, b"0123456789", name="ten.txt")
    liar = st.add_artifact(sbx.id, b"abc", name="liar.txt", size_bytes=4)  # the record lies
    st.inject(
        "download",
        Fault.short_body(3),
        Fault.long_body(b"XYZ"),
        Fault.body(b"same-len!!"),
        artifact_id=art.id,
    )
    short = http.get(f"/v1/artifacts/{art.id}/download")
    assert short.content == b"0123456" and short.headers["content-length"] == "7"
    long = http.get(f"/v1/artifacts/{art.id}/download")
    assert long.content == b"0123456789XYZ" and long.headers["content-length"] == "13"
    assert sdk.artifacts.download(art.id) == b"same-len!!"
    assert sdk.artifacts.get(art.id)["sizeBytes"] == 10
    assert sdk.artifacts.download(liar.id) == b"abc"
    assert sdk.artifacts.get(liar.id)["sizeBytes"] == 4


def test_fault_download_url_to_a_foreign_host(fake, sdk):
    st = fake.state
    sbx = st.add_sandbox()
    art = st.add_artifact(sbx.id, b"secret bytes", name="s.txt")
    assert fake.foreign_base_url and urlsplit(fake.foreign_base_url).hostname == "127.0.0.2"
    assert fake.other_port_base_url and urlsplit(fake.other_port_base_url).hostname == "127.0.0.1"
    st.inject(
        "download_url",
        Fault.foreign_url(),
        Fault.foreign_url("{other_port}/v1/artifacts/{id}/download"),
        Fault.foreign_url("http://evil.example/steal/{id}"),
    )
    to_foreign = sdk.artifacts.download_url(art.id)
    assert to_foreign["url"] == f"{fake.foreign_base_url}/v1/artifacts/{art.id}/download"
    assert to_foreign["headers"] == {"Authorization": f"Bearer {fake.api_key}"}
    other_port = sdk.artifacts.download_url(art.id)
    assert other_port["url"] == f"{fake.other_port_base_url}/v1/artifacts/{art.id}/download"
    assert sdk.artifacts.download_url(art.id)["url"] == f"http://evil.example/steal/{art.id}"

    # a careful client fetches nothing there, or fetches without the key: no leak
    r = httpx.get(to_foreign["url"])
    assert r.status_code == 200 and r.content == b"secret bytes"  # the foreign host serves
    assert st.leaks() == [] and len(st.foreign_requests()) == 1
    # a careless one sends the returned headers: recorded as a leak, with where it went
    httpx.get(other_port["url"], headers=other_port["headers"])
    (leak,) = st.leaks()
    assert leak.foreign and leak.server == urlsplit(fake.other_port_base_url).netloc
    assert leak.authorization == f"Bearer {fake.api_key}"
    assert leak.host == urlsplit(fake.other_port_base_url).netloc
    # the key in a query string counts too
    httpx.get(f"{fake.foreign_base_url}/anything", params={"key": fake.api_key})
    assert len(st.leaks()) == 2
    assert st.foreign_requests()[-1].status == 404


def test_fault_redirect_to_another_host(fake, http, sdk):
    st = fake.state
    sbx = st.add_sandbox()
    art = st.add_artifact(sbx.id, b"moved", name="m.txt")
    st.inject(
        "download", Fault.redirect(), Fault.redirect(), Fault.redirect("http://evil.example/x")
    )
    r = http.get(f"/v1/artifacts/{art.id}/download")
    assert r.status_code == 302
    assert r.headers["location"] == f"{fake.foreign_base_url}/v1/artifacts/{art.id}/download"
    # httpx drops Authorization on a cross-origin redirect: the foreign host sees no key
    r = http.get(f"/v1/artifacts/{art.id}/download", follow_redirects=True)
    assert r.status_code == 200 and r.content == b"moved"
    assert len(st.foreign_requests()) == 1 and st.leaks() == []
    with pytest.raises(CrowNestApiError) as exc:  # the SDK does not follow redirects
        sdk.artifacts.download(art.id)
    assert exc.value.status == 302


def test_fault_pagination_anomalies(fake, http):
    st = fake.state
    sbx = st.add_sandbox()
    st.add_artifacts(sbx.id, 10)
    url = f"/v1/sandboxes/{sbx.id}/artifacts"
    # hasMore without a cursor, on the last page
    st.inject("list", Fault.has_more_without_cursor())
    body = http.get(url).json()
    assert body["hasMore"] is True and "nextCursor" not in body and len(body["data"]) == 10
    # page 2 hands back the cursor it was called with
    st.inject("list", Fault.passthrough(), Fault.repeat_cursor())
    p1 = http.get(url, params={"limit": 3}).json()
    p2 = http.get(url, params={"limit": 3, "cursor": p1["nextCursor"]}).json()
    assert p2["hasMore"] is True and p2["nextCursor"] == p1["nextCursor"]
    assert p2["data"] == st.listing(sbx.id)[3:6]
    # A -> B -> A: page 3 hands back page 1's cursor
    st.inject("list", Fault.passthrough(), Fault.passthrough(), Fault.cycle_cursor())
    q1 = http.get(url, params={"limit": 3}).json()
    q2 = http.get(url, params={"limit": 3, "cursor": q1["nextCursor"]}).json()
    q3 = http.get(url, params={"limit": 3, "cursor": q2["nextCursor"]}).json()
    assert q3["nextCursor"] == p1["nextCursor"] == q1["nextCursor"] != q2["nextCursor"]
    assert q3["data"] == st.listing(sbx.id)[6:9]
    # misuse is loud
    st.inject("list", Fault.repeat_cursor())
    r = http.get(url)
    assert r.status_code == 500 and r.json()["error"]["code"] == "fake_misconfigured"
    fresh = st.add_sandbox()
    st.inject("list", Fault.cycle_cursor(), sandbox_id=fresh.id)
    r = http.get(f"/v1/sandboxes/{fresh.id}/artifacts")
    assert r.status_code == 500 and r.json()["error"]["code"] == "fake_misconfigured"


# --------------------------------------------------------------------------------------------
# Request log and lifecycle
# --------------------------------------------------------------------------------------------


def test_request_log_records_method_path_query_auth_and_host(fake, sdk):
    st = fake.state
    sbx = st.add_sandbox()
    art = st.add_artifact(sbx.id, b"x", name="x.txt")
    sdk.artifacts.get(art.id)
    httpx.get(f"{fake.base_url}/v1/sandboxes/{sbx.id}/artifacts?limit=5&cursor=")
    sdk.artifacts.download_url(art.id)
    get, lst, dlu = st.requests
    assert (get.method, get.path, get.route, get.status) == (
        "GET",
        f"/v1/artifacts/{art.id}",
        "get",
        200,
    )
    assert get.authorization == f"Bearer {fake.api_key}"
    assert get.host == get.server == urlsplit(fake.base_url).netloc and not get.foreign
    assert lst.authorization is None and lst.status == 401
    assert lst.query == "limit=5&cursor=" and lst.params == {"limit": ["5"], "cursor": [""]}
    assert (dlu.method, dlu.route) == ("POST", "download_url")
    st.clear_requests()
    assert st.requests == []


def test_running_fake_serves_a_given_state_and_stops():
    state = FakeState(api_key="cn_test_custom")
    sbx = state.add_sandbox("sbx_fixed")
    state.add_artifact(sbx.id, b"1", artifact_id="art_fixed")
    with running_fake(state, foreign=False) as base_url:
        assert state.base_url == base_url and state.foreign_base_url is None
        with CrowNest(api_key="cn_test_custom", base_url=base_url, timeout=5) as c:
            assert [a["id"] for a in c.artifacts.list("sbx_fixed")] == ["art_fixed"]
        host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
    assert state.base_url is None
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()


def test_each_test_gets_a_fresh_state_on_the_shared_server(fake):
    from tests.support import crownest as fake_crownest

    assert fake.state.sandboxes == {} and fake.state.requests == []
    assert fake.state.base_url == fake.base_url
    old = fake.state
    sbx = old.add_sandbox()
    url = f"{fake.base_url}/v1/sandboxes/{sbx.id}"
    server = fake_crownest._shared
    assert server is not None and server.base_url == fake.base_url
    server.use(FakeState())  # what the fixture does after each test
    try:
        assert httpx.get(url, headers=fake.auth()).status_code == 404
        assert old.requests == [] and old.base_url is None
    finally:
        server.use(old)
    assert httpx.get(url, headers=fake.auth()).json()["sandbox"]["id"] == sbx.id
