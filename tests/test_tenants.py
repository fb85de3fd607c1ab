"""Tenant isolation: another tenant's artifact, lineage, workflow, export, event or import answers
exactly as an unknown one, lists never include it, and identical content uploaded by two
tenants gives indistinguishable answers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.apikeys import ApiKeys
from storage.db.engine import Database
from storage.imports import ImportJobs
from tests.support.inprocess import AppServer, start_app


def setup_keys(database_url: str) -> tuple[str, str, str]:
    async def go() -> tuple[str, str, str]:
        db = Database(database_url)
        try:
            keys = ApiKeys(db)
            a = (await keys.create("tenant-a", ["admin"]))[1]
            b = (await keys.create("tenant-b", ["admin"]))[1]
            job = await ImportJobs(db).create("crownest", {"sandbox_id": "sbx"}, tenant="tenant-a")
            return a, b, job
        finally:
            await db.dispose()

    return asyncio.run(go())


@pytest.fixture
def two(
    tmp_path: Path, database_url: str
) -> Iterator[tuple[AppServer, httpx.Client, httpx.Client, str]]:
    key_a, key_b, job = setup_keys(database_url)
    srv = start_app(tmp_path / "data", database_url=database_url, env={"ARTIFACTS_RATE_LIMIT": ""})
    a = srv.client(headers={"Authorization": f"Bearer {key_a}"})
    b = srv.client(headers={"Authorization": f"Bearer {key_b}"})
    try:
        yield srv, a, b, job
    finally:
        a.close()
        b.close()
        srv.stop()


def create(c: httpx.Client, workflow: str, content: str, **extra: Any) -> dict[str, Any]:
    body = {"workflow_id": workflow, "artifact_type": "text", "title": "t", "content": content}
    r = c.post("/artifacts", json={**body, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def masked(r: httpx.Response, *secrets: str) -> tuple[int, str]:
    text = r.text
    for s in secrets:
        text = text.replace(s, "<ID>")
    return r.status_code, text


PROBES = [
    ("GET", "/artifacts/{id}"),
    ("GET", "/artifacts/{id}/content"),
    ("GET", "/artifacts/{id}/download"),
    ("HEAD", "/artifacts/{id}/download"),
    ("GET", "/artifacts/{id}/lineage?direction=both&depth=5"),
    ("PUT", "/artifacts/{id}"),
    ("DELETE", "/artifacts/{id}"),
    ("POST", "/artifacts/{id}/upload"),
    ("POST", "/artifacts/{id}/download-url"),
    ("POST", "/artifacts/{id}/download-url?version=1"),
    ("GET", "/artifacts/{id}/versions"),
    ("GET", "/artifacts/{id}/versions/1"),
    ("GET", "/artifacts/{id}/versions/1/download"),
    ("HEAD", "/artifacts/{id}/versions/1/download"),
    ("GET", "/artifacts/{prefix}"),
    ("GET", "/store/workflows/{wf}"),
    ("GET", "/store/workflows/{wf}/deliverables"),
    ("GET", "/store/workflows/{wf}/export"),
    ("GET", "/imports/{job}"),
    ("POST", "/imports/{job}/resume"),
]


def test_the_probes_cover_every_route_that_names_a_resource() -> None:
    from tests.support.routes import PUBLIC, ROUTES

    names = {
        "{artifact_id}": "{id}",
        "{workflow_id}": "{wf}",
        "{import_id}": "{job}",
        "{version}": "1",  # the probes name version 1
    }
    served = set()
    for method, path, _ in ROUTES:
        bare = path.removeprefix("/api/v1")
        if "{" not in bare or path in PUBLIC:  # a public route (a docs asset) names no tenant's
            continue
        for old, new in names.items():
            bare = bare.replace(old, new)
        served.add((method, bare))
    probed = {(m, t.split("?")[0]) for m, t in PROBES if "{prefix}" not in t}
    assert served == probed


def probe(c: httpx.Client, method: str, template: str, ids: dict[str, str]) -> httpx.Response:
    path = template.format(**ids)
    kwargs: dict[str, Any] = {}
    if method == "PUT":
        kwargs["json"] = {"title": "stolen"}
    if method == "POST" and path.endswith("/upload"):
        kwargs = {"content": b"overwrite", "headers": {"content-type": "text/plain"}}
    return c.request(method, path, **kwargs)


def test_the_other_tenants_ids_answer_as_unknown_ones(
    two: tuple[AppServer, httpx.Client, httpx.Client, str],
) -> None:
    _, a, b, job = two
    parent = create(a, "wf-a", "parent bytes", is_primary_deliverable=True)
    child = create(a, "wf-a", "child bytes", derived_from=[parent["id"]], phase_id="p2")
    theirs = {"id": child["id"], "prefix": child["id"][:8], "wf": "wf-a", "job": job}
    unknown_id = str(uuid.uuid4())
    unknown = {
        "id": unknown_id,
        "prefix": unknown_id[:8],
        "wf": "wf-none",
        "job": str(uuid.uuid4()),
    }
    for method, template in PROBES:
        got = probe(b, method, template, theirs)
        expected = probe(b, method, template, unknown)
        assert got.status_code == 404, (method, template, got.status_code, got.text)
        swapped = {v: k for k, v in theirs.items()} | {v: k for k, v in unknown.items()}
        assert masked(got, *swapped) == masked(expected, *swapped), (method, template)
        assert set(got.headers) - {"date"} == set(expected.headers) - {"date"}
    # a parent of theirs is as unknown as any
    r = b.post(
        "/artifacts",
        json={"workflow_id": "w", "artifact_type": "text", "title": "t", "content": "x",
              "derived_from": [parent["id"]]},
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "artifact_not_found"
    # and nothing of theirs changed
    assert a.get(f"/artifacts/{child['id']}").json()["title"] == "t"
    assert a.get(f"/artifacts/{child['id']}/download").content == b"child bytes"
    assert a.get(f"/imports/{job}").status_code == 200


def test_lists_feeds_and_workflows_never_include_the_other_tenant(
    two: tuple[AppServer, httpx.Client, httpx.Client, str],
) -> None:
    _, a, b, _ = two
    mine = [create(b, "shared", f"b{i}")["id"] for i in range(3)]
    theirs = [create(a, "shared", f"a{i}", phase_id="x")["id"] for i in range(4)]
    create(a, "only-a", "z", is_primary_deliverable=True)
    listed = [x["id"] for x in b.get("/artifacts", params={"limit": 200}).json()]
    assert sorted(listed) == sorted(mine)
    assert b.get("/artifacts", params={"derived_from": theirs[0]}).json() == []
    assert b.get("/artifacts", params={"workflow_id": "only-a"}).json() == []
    flows = {w["workflow_id"]: w for w in b.get("/store/workflows").json()}
    assert set(flows) == {"shared"} and flows["shared"]["artifact_count"] == 3
    assert flows["shared"]["phases"] == [None]
    shared = b.get("/store/workflows/shared").json()
    assert [p["artifact_count"] for p in shared["phases"]] == [3]
    events = b.get("/store/events", params={"after": 0}, headers={"Accept": "application/json"})
    assert events.status_code == 200, events.text
    body = events.json()
    seen = {e["artifact_id"] for e in (body["events"] if isinstance(body, dict) else body)}
    assert seen == set(mine)
    export = b.get("/store/workflows/shared/export", params={"format": "tar"})
    assert export.status_code == 200
    import io
    import tarfile

    names = tarfile.open(fileobj=io.BytesIO(export.content)).getnames()
    assert len([n for n in names if n != "manifest.json"]) == 3
    listed_a = {x["id"] for x in a.get("/artifacts", params={"limit": 200}).json()}
    assert set(theirs) <= listed_a and not set(mine) & listed_a


def test_identical_content_in_two_tenants_is_indistinguishable(
    two: tuple[AppServer, httpx.Client, httpx.Client, str],
) -> None:
    _, a, b, _ = two
    first = a.post(
        "/artifacts",
        data={"workflow_id": "w", "artifact_type": "other", "title": "same"},
        files={"file": ("same.bin", b"identical bytes" * 100, "application/octet-stream")},
    )
    second = b.post(
        "/artifacts",
        data={"workflow_id": "w", "artifact_type": "other", "title": "same"},
        files={"file": ("same.bin", b"identical bytes" * 100, "application/octet-stream")},
    )
    assert first.status_code == second.status_code == 201
    fa, fb = first.json(), second.json()
    for body in (fa, fb):
        body.pop("id")
        body.pop("created_at")
    assert fa == fb
    assert set(first.headers) == set(second.headers)
    # the same Idempotency-Key in two tenants names two requests
    for c in (a, b):
        r = c.post(
            "/artifacts",
            json={"workflow_id": "w", "artifact_type": "text", "title": "k", "content": "k"},
            headers={"Idempotency-Key": "shared-key"},
        )
        assert r.status_code == 201 and "idempotent-replayed" not in r.headers
