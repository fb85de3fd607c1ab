"""Every `/artifacts/{id}…` route names its artifact the same way, through one resolution
(ArtifactService._resolve): the full id (any case), or a unique prefix of at least 8 characters
among the caller's live artifacts; several matches answer 409 `ambiguous_artifact_id` naming
them, fewer than 8 characters 404 `artifact_not_found` saying the minimum. Keyed writes and
signed links bind to the full id the prefix resolved to.

Rows with chosen ids (two sharing their first 15 characters) are seeded through the real
ArtifactService into the server's own database; one server per backend for the module, each
test with ids of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest

from storage.artifacts import MIN_PREFIX, ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database
from storage.db.migrate import upgrade
from storage.records import NewArtifact
from tests.support.databases import BACKENDS, fresh_database
from tests.support.inprocess import AppServer, start_app
from tests.support.routes import ROUTES

OTHER_TENANT = "someone-else"
SHARED = 15  # twins share this many leading characters: their 8- and 12-prefixes are ambiguous


@dataclass
class Env:
    server: AppServer
    url: str

    def seed(self, *ids: str, tenant: str = "default", deleted: bool = False) -> None:
        """Live artifacts with these ids (content: the id's bytes), or deleted ones."""

        async def run() -> None:
            db = Database(self.url)
            try:
                pending = iter(ids)
                service = ArtifactService(
                    db,
                    FilesystemBlobStore(self.server.data_dir / "blobs"),
                    new_id=lambda: next(pending),
                    tenant=tenant,
                )
                for artifact_id in ids:
                    new = NewArtifact(
                        workflow_id=f"wf-{artifact_id[:8]}",
                        artifact_type="text",
                        title="seeded",
                        content_type="text/plain",
                        is_text=True,
                    )
                    created = await service.create(new, artifact_id.encode())
                    if deleted:
                        await service.delete(created.id)
            finally:
                await db.dispose()

        asyncio.run(run())


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("prefixes")
    with fresh_database(tmp, request.param) as url:
        upgrade(url)
        server = start_app(tmp / "data", database_url=url)
        try:
            yield Env(server, url)
        finally:
            server.stop()


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with env.server.client() as c:
        yield c


def fresh() -> str:
    return str(uuid.uuid4())


def twins() -> tuple[str, str]:
    """Two ids equal in their first SHARED characters (and no other id's, being random)."""
    a = fresh()
    other = "0" if a[SHARED] != "0" else "1"
    return a, a[:SHARED] + other + a[SHARED + 1 :]


# (method, suffix): every route that names an artifact
ARTIFACT_ROUTES = [
    ("GET", ""),
    ("GET", "/content"),
    ("PUT", ""),
    ("DELETE", ""),
    ("POST", "/upload"),
    ("GET", "/download"),
    ("HEAD", "/download"),
    ("POST", "/download-url"),
    ("GET", "/lineage"),
    ("GET", "/versions"),
    ("GET", "/versions/1"),
    ("GET", "/versions/1/download"),
    ("HEAD", "/versions/1/download"),
]
WRITES = [("PUT", ""), ("DELETE", ""), ("POST", "/upload")]
NEW_BYTES = b"uploaded through a reference"


def route_id(route: tuple[str, str]) -> str:
    return f"{route[0]} {route[1] or '/'}"


def call(
    http: httpx.Client,
    route: tuple[str, str],
    ref: str,
    key: str | None = None,
    base: str = "/artifacts",
) -> httpx.Response:
    method, suffix = route
    headers = {} if key is None else {"Idempotency-Key": key}
    kwargs: dict[str, object] = {}
    if method == "PUT":
        kwargs["json"] = {"title": "renamed"}
    if suffix == "/upload":
        kwargs["content"] = NEW_BYTES
        headers["content-type"] = "text/plain"
    return http.request(method, f"{base}/{ref}{suffix}", headers=headers, **kwargs)


def assert_names(http: httpx.Client, route: tuple[str, str], r: httpx.Response, full: str) -> None:
    """The successful answer is about the artifact `full`, and a write changed it."""
    method, suffix = route
    assert r.status_code == 200, (route, r.status_code, r.text)
    if method == "HEAD" or suffix.endswith("/download"):
        assert r.headers["etag"] == f'"{hashlib.sha256(full.encode()).hexdigest()}"'
        assert r.content == (b"" if method == "HEAD" else full.encode())
    elif suffix == "/download-url":
        url = r.json()["url"]
        assert urlsplit(url).path == f"/artifacts/{full}/download", url
    elif suffix == "/lineage":
        assert r.json()["root"] == full
    elif suffix == "/versions":
        assert [v["artifact_id"] for v in r.json()] == [full]
    elif suffix.startswith("/versions/"):
        assert (r.json()["artifact_id"], r.json()["version"]) == (full, 1)
    elif method == "GET" and suffix == "":
        assert r.json()["id"] == full
    else:
        assert r.json()["artifact_id"] == full
    after = http.get(f"/artifacts/{full}")
    if method == "DELETE":
        assert after.status_code == 404
    elif method == "PUT":
        assert after.json()["title"] == "renamed"
    elif suffix == "/upload":
        assert http.get(f"/artifacts/{full}/download").content == NEW_BYTES


def assert_untouched(http: httpx.Client, *ids: str) -> None:
    for artifact_id in ids:
        r = http.get(f"/artifacts/{artifact_id}")
        assert r.status_code == 200, r.text
        assert r.json()["title"] == "seeded"
        assert http.get(f"/artifacts/{artifact_id}/download").content == artifact_id.encode()


def assert_problem(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"detail", "code"} and body["code"] == code, body
    return str(body["detail"])


# -- every route, every way of naming ---------------------------------------------------------


def test_the_table_covers_every_route_that_names_an_artifact() -> None:
    served = {
        (
            method,
            path.removeprefix("/api/v1")
            .removeprefix("/artifacts/{artifact_id}")
            .replace("{version}", "1"),  # the table names version 1
        )
        for method, path, _ in ROUTES
        if "{artifact_id}" in path
    }
    assert served == set(ARTIFACT_ROUTES)


@pytest.mark.parametrize("route", ARTIFACT_ROUTES, ids=route_id)
@pytest.mark.parametrize("form", ["full", "FULL", "8", "12", "35"])
def test_full_id_and_prefixes_of_8_and_more_name_the_artifact(
    env: Env, http: httpx.Client, route: tuple[str, str], form: str
) -> None:
    full = fresh()
    env.seed(full)
    ref = {"full": full, "FULL": full.upper()}.get(form) or full[: int(form)]
    assert_names(http, route, call(http, route, ref), full)
    # a write's events name the full id too
    page = http.get(
        "/store/events",
        params={"workflow_id": f"wf-{full[:8]}"},
        headers={"Accept": "application/json"},
    )
    events = page.json()["events"]
    assert events and {e["artifact_id"] for e in events} == {full}, events
    assert len(events) == (1 if route not in WRITES else 2), events


@pytest.mark.parametrize("route", ARTIFACT_ROUTES, ids=route_id)
@pytest.mark.parametrize("length", [8, 12, SHARED])
def test_an_ambiguous_prefix_is_409_naming_the_candidates_and_changes_nothing(
    env: Env, http: httpx.Client, route: tuple[str, str], length: int
) -> None:
    a, b = twins()
    env.seed(a, b)
    for ref in (a[:length], a[:length].upper()):
        for base in ("/artifacts", "/api/v1/artifacts"):
            r = call(http, route, ref, base=base)
            if route[0] == "HEAD":
                assert (r.status_code, r.content) == (409, b"")
                continue
            detail = assert_problem(r, 409, "ambiguous_artifact_id")
            assert a[:length] in detail and a in detail and b in detail, detail
            assert "2 artifacts" in detail, detail
    assert_untouched(http, a, b)
    # one more character tells them apart
    assert_names(http, route, call(http, route, a[: SHARED + 1]), a)


@pytest.mark.parametrize("route", ARTIFACT_ROUTES, ids=route_id)
def test_fewer_than_8_characters_are_too_short(
    env: Env, http: httpx.Client, route: tuple[str, str]
) -> None:
    full = fresh()
    env.seed(full)
    for ref in (full[:7], full[:1], full[:7].upper(), "zzzzzzz"):
        r = call(http, route, ref)
        if route[0] == "HEAD":
            assert (r.status_code, r.content) == (404, b"")
            continue
        detail = assert_problem(r, 404, "artifact_not_found")
        assert "too short" in detail and f"at least {MIN_PREFIX} characters" in detail, detail
        assert repr(ref) in detail
    assert_untouched(http, full)


@pytest.mark.parametrize("route", ARTIFACT_ROUTES, ids=route_id)
def test_deleted_artifacts_and_other_tenants_do_not_count(
    env: Env, http: httpx.Client, route: tuple[str, str]
) -> None:
    live, gone = twins()
    theirs = live[:SHARED] + ("2" if live[SHARED] != "2" else "3") + live[SHARED + 1 :]
    env.seed(gone, deleted=True)
    env.seed(theirs, tenant=OTHER_TENANT)
    env.seed(live)
    # the shared prefix names the one live artifact of this tenant
    assert_names(http, route, call(http, route, live[:8]), live)
    # a deleted artifact, by prefix or full id, and another tenant's, are unknown
    for ref in (gone, gone[: SHARED + 1], theirs, theirs[: SHARED + 1]):
        r = call(http, route, ref)
        if route[0] == "HEAD":
            assert r.status_code == 404
        else:
            assert_problem(r, 404, "artifact_not_found")


# -- keyed writes bind to the full id ---------------------------------------------------------


@pytest.mark.parametrize("route", WRITES, ids=route_id)
def test_a_keyed_write_by_prefix_replays_by_any_name_of_its_artifact(
    env: Env, http: httpx.Client, route: tuple[str, str]
) -> None:
    full = fresh()
    env.seed(full)
    key = f"key-{uuid.uuid4()}"
    first = call(http, route, full[:8], key)
    assert_names(http, route, first, full)
    assert "Idempotent-Replayed" not in first.headers
    after_first = http.get(f"/artifacts/{full}", params={"include_content": "false"})
    # the same key by full id, a longer prefix, in capitals, under /api/v1: the same request
    for ref, base in (
        (full, "/artifacts"),
        (full[:12], "/artifacts"),
        (full.upper(), "/artifacts"),
        (full[:8], "/api/v1/artifacts"),
    ):
        again = call(http, route, ref, key, base)
        assert again.status_code == 200, (ref, again.text)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.content == first.content
    # ... and still once the prefix is shared by a new artifact (and, for DELETE, the
    # artifact is gone): the retry names what the first request named
    twin = full[:SHARED] + ("0" if full[SHARED] != "0" else "1") + full[SHARED + 1 :]
    env.seed(twin)
    again = call(http, route, full[:8], key)
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (200, "true")
    assert again.content == first.content
    assert_untouched(http, twin)
    if route[0] != "DELETE":
        now = http.get(f"/artifacts/{full}", params={"include_content": "false"})
        assert now.json()["updated_at"] == after_first.json()["updated_at"]  # written once
    # the key on another artifact is another request
    other = fresh()
    env.seed(other)
    for ref in (other, other[:8]):
        reused = call(http, route, ref, key)
        assert_problem(reused, 422, "idempotency_key_reused")
    assert_untouched(http, other)


@pytest.mark.parametrize("route", WRITES, ids=route_id)
def test_a_keyed_write_that_failed_on_its_reference_leaves_the_key_free(
    env: Env, http: httpx.Client, route: tuple[str, str]
) -> None:
    a, b = twins()
    env.seed(a, b)
    key = f"key-{uuid.uuid4()}"
    assert call(http, route, a[:7], key).status_code == 404
    assert call(http, route, a[:8], key).status_code == 409
    assert_untouched(http, a, b)
    done = call(http, route, a[: SHARED + 1], key)
    assert_names(http, route, done, a)
    assert "Idempotent-Replayed" not in done.headers
    # a retry that names it by a too-short reference is refused as one without a key
    detail = assert_problem(call(http, route, a[:7], key), 404, "artifact_not_found")
    assert "too short" in detail


# -- signed links bind to the full id ---------------------------------------------------------


def test_a_link_made_by_prefix_names_the_full_id_and_only_it(env: Env, http: httpx.Client) -> None:
    full = fresh()
    env.seed(full)
    link = http.post(f"/artifacts/{full[:8]}/download-url").json()
    parts = urlsplit(link["url"])
    assert parts.path == f"/artifacts/{full}/download"
    with env.server.client() as anonymous:
        assert anonymous.get(link["url"]).content == full.encode()
        # the same signature on the prefix (or another spelling of the id) opens nothing
        for ref in (full[:8], full[:12], full.upper()):
            r = anonymous.get(f"/artifacts/{ref}/download?{parts.query}")
            assert_problem(r, 403, "invalid_link")
    # a new artifact sharing the prefix changes nothing for the link
    twin = full[:SHARED] + ("0" if full[SHARED] != "0" else "1") + full[SHARED + 1 :]
    env.seed(twin)
    with env.server.client() as anonymous:
        assert anonymous.get(link["url"]).content == full.encode()
