"""Workflow ids are any non-empty string (CONTRACT.md), `/` included, and every view reaches
them: the id is one path segment, its `/` sent as `%2F` (app/workflows/paths.py). The list
shows them as stored, the `workflow_id` filters of /artifacts and /store/events take them as
they are, and an export names its files safely whatever the workflow, phase or session ids hold.

One server per backend for the module; the workflows are created over HTTP, and one is written
straight through the storage layer, as a store written before these routes existed holds it.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest

from app.workflows.export import safe_segment
from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database
from storage.db.migrate import upgrade
from storage.records import NewArtifact
from tests.support.databases import BACKENDS, fresh_database
from tests.support.exports import assert_safe_name
from tests.support.inprocess import AppServer, start_app

WITH_SLASHES = [
    "org/repo",
    "x/deliverables",  # was routed to the deliverables of "x"
    "x/export",
    "a//b",
    "ends/",
    "/starts",
    "../up",
    "a/b/c/d",
    "50%/b?c#d e",
    "équipe/報告 🚀",
]
LEGACY = "legacy/stored-before"  # written through the storage layer, not over HTTP
PLAIN = "x"
ALL = [*WITH_SLASHES, LEGACY, PLAIN]
PHASE = "p/1"
SESSION = "s/../1"


def seg(workflow_id: str) -> str:
    """The id as one path segment."""
    return quote(workflow_id, safe="")


@dataclass
class Env:
    server: AppServer
    ids: dict[str, tuple[str, str]]  # workflow -> (primary in PHASE, other in no phase)


def create(c: httpx.Client, workflow_id: str, **extra: object) -> str:
    body = {"workflow_id": workflow_id, "artifact_type": "text", "title": "t", "content": "x"}
    r = c.post("/artifacts", json={**body, **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def seed_legacy(url: str, server: AppServer) -> tuple[str, str]:
    async def run() -> tuple[str, str]:
        db = Database(url)
        try:
            service = ArtifactService(db, FilesystemBlobStore(server.data_dir / "blobs"))
            made = []
            for phase, primary in ((PHASE, True), (None, False)):
                new = NewArtifact(
                    workflow_id=LEGACY,
                    artifact_type="text",
                    title="t",
                    content_type="text/markdown",
                    phase_id=phase,
                    session_id=SESSION,
                    is_primary_deliverable=primary,
                    is_text=True,
                )
                made.append((await service.create(new, b"legacy")).id)
            return made[0], made[1]
        finally:
            await db.dispose()

    return asyncio.run(run())


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("workflow-ids")
    with fresh_database(tmp, request.param) as url:
        upgrade(url)
        server = start_app(tmp / "data", database_url=url)
        try:
            ids = {LEGACY: seed_legacy(url, server)}
            with server.client() as c:
                for workflow_id in [*WITH_SLASHES, PLAIN]:
                    primary = create(
                        c,
                        workflow_id,
                        phase_id=PHASE,
                        session_id=SESSION,
                        is_primary_deliverable=True,
                        title=f"deliverable of {workflow_id}",
                    )
                    ids[workflow_id] = (primary, create(c, workflow_id, title="../../escape"))
            yield Env(server, ids)
        finally:
            server.stop()


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with env.server.client() as c:
        yield c


def members(fmt: str, data: bytes) -> dict[str, bytes]:
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {name: z.read(name) for name in z.namelist()}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        out = {}
        for member in t.getmembers():
            extracted = t.extractfile(member)
            assert extracted is not None
            out[member.name] = extracted.read()
        return out


# -- every view reaches them ------------------------------------------------------------------


def test_the_list_shows_every_id_as_stored(env: Env, http: httpx.Client) -> None:
    listed = http.get("/store/workflows", params={"limit": 200}).json()
    assert {w["workflow_id"] for w in listed} == set(ALL)


@pytest.mark.parametrize("workflow_id", ALL)
@pytest.mark.parametrize("base", ["/store/workflows", "/api/v1/store/workflows"])
def test_every_view_reaches_the_workflow(
    env: Env, http: httpx.Client, workflow_id: str, base: str
) -> None:
    primary, other = env.ids[workflow_id]
    spellings = {seg(workflow_id), seg(workflow_id).replace("%2F", "%2f")}
    for segment in spellings:
        detail = http.get(f"{base}/{segment}")
        assert detail.status_code == 200, (segment, detail.text)
        body = detail.json()
        assert (body["workflow_id"], body["artifact_count"]) == (workflow_id, 2)
        assert [p["phase_id"] for p in body["phases"]] == [PHASE, None]
        assert body["phases"][0]["primary_deliverable"]["id"] == primary
        assert body["phases"][0]["sessions"] == [SESSION]

        deliverables = http.get(f"{base}/{segment}/deliverables")
        assert deliverables.status_code == 200, deliverables.text
        assert [(d["id"], d["workflow_id"]) for d in deliverables.json()] == [
            (primary, workflow_id)
        ]

        for fmt in ("zip", "tar"):
            r = http.get(f"{base}/{segment}/export", params={"format": fmt})
            assert r.status_code == 200, r.text
            name = f"{safe_segment(workflow_id, 'workflow')}.{fmt}"
            assert "/" not in name
            assert r.headers["content-disposition"].startswith('attachment; filename="')
            assert f"filename*=UTF-8''{quote(name, safe='')}" in r.headers["content-disposition"]
            files = members(fmt, r.content)
            manifest = json.loads(files.pop("manifest.json"))
            assert manifest["workflow_id"] == workflow_id
            assert {f["artifact_id"] for f in manifest["files"]} == {primary, other}
            assert {f["path"] for f in manifest["files"]} == set(files)
            for path in files:
                assert_safe_name(path)
            by_id = {f["artifact_id"]: f for f in manifest["files"]}
            assert by_id[primary]["path"].startswith("p_1/")  # the phase's `/`, made safe
            assert by_id[primary]["session_id"] == SESSION
            assert by_id[other]["path"].startswith("_no_phase/")


@pytest.mark.parametrize("workflow_id", ALL)
def test_the_workflow_id_filters_take_the_id_as_it_is(
    env: Env, http: httpx.Client, workflow_id: str
) -> None:
    listed = http.get("/artifacts", params={"workflow_id": workflow_id}).json()
    assert {a["id"] for a in listed} == set(env.ids[workflow_id])
    assert {a["workflow_id"] for a in listed} == {workflow_id}
    page = http.get(
        "/store/events",
        params={"workflow_id": workflow_id},
        headers={"Accept": "application/json"},
    ).json()
    assert {e["artifact_id"] for e in page["events"]} >= set(env.ids[workflow_id])
    assert {e["workflow_id"] for e in page["events"]} == {workflow_id}


# -- the segment, not the decoded path, names the workflow ------------------------------------


def test_an_encoded_slash_never_reaches_another_workflows_views(
    env: Env, http: httpx.Client
) -> None:
    # /store/workflows/x/deliverables: the deliverables of "x"
    deliverables = http.get("/store/workflows/x/deliverables")
    assert [d["id"] for d in deliverables.json()] == [env.ids[PLAIN][0]]
    # /store/workflows/x%2Fdeliverables: the workflow "x/deliverables" itself
    detail = http.get("/store/workflows/x%2Fdeliverables").json()
    assert detail["workflow_id"] == "x/deliverables"
    export = http.get("/store/workflows/x%2Fexport/deliverables").json()
    assert [d["id"] for d in export] == [env.ids["x/export"][0]]


def test_an_unencoded_slash_is_no_route(env: Env, http: httpx.Client) -> None:
    for path in (
        "/store/workflows/org/repo",
        "/store/workflows/org/repo/export",
        "/store/workflows/a/b/c/d/deliverables",
    ):
        r = http.get(path)
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"}), path


def test_unknown_ids_with_slashes_are_workflow_not_found(env: Env, http: httpx.Client) -> None:
    for workflow_id in ("no/such", "org/repo/", "/", "//", "org/rep"):
        for suffix in ("", "/deliverables", "/export"):
            r = http.get(f"/store/workflows/{seg(workflow_id)}{suffix}")
            assert r.status_code == 404, (workflow_id, suffix, r.text)
            assert r.json() == {
                "detail": f"Workflow {workflow_id!r} has no artifacts.",
                "code": "workflow_not_found",
            }


def test_routing_answers_keep_the_encoding(env: Env, http: httpx.Client) -> None:
    # a trailing slash after the segment redirects to the segment as sent
    r = http.get("/store/workflows/org%2Frepo/", follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"].endswith("/store/workflows/org%2Frepo")
    r = http.get("/api/v1/store/workflows/org%2Frepo/export/", follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"].endswith("/api/v1/store/workflows/org%2Frepo/export")
    # ...while an id that ends in `/` is that id (see test_every_view_reaches_the_workflow)
    assert http.get("/store/workflows/ends%2F").json()["workflow_id"] == "ends/"
    # another method: 405 with the path's Allow
    r = http.post("/store/workflows/org%2Frepo/export")
    assert (r.status_code, r.headers["allow"]) == (405, "GET")
    # the artifact routes are routed as before: an encoded slash in an id is no route there
    for path in ("/artifacts/..%2F..%2Fetc%2Fpasswd", "/artifacts/a%2F%2Fb"):
        r = http.get(path)
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"}), path
