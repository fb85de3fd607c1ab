"""The hot routes (app/artifacts/hot.py) answer exactly as the routes do.

Two real servers share one database and blob directory, one with the hot path and one without
(ARTIFACTS_HOT_ROUTES=false); every request below goes to both, with each kind of credential, and
the two answers must match in status, headers (but Date) and bytes. The requests cover what the
hot path answers itself (plain gets and lists, every filter, cursors, /api/v1, unkeyed JSON
creates) and what it must leave to the routes (prefixes, odd values, unknown or repeated
parameters, bad cursors, keyed creates), and the errors of both (401, 403, 404 across tenants,
422 bodies). A last test pins which requests the hot path takes, so that the others cannot pass
by the hot path never answering.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.artifacts.hot import plan, plan_create
from app.settings import Settings
from storage.apikeys import ApiKeys
from storage.db.engine import Database
from tests.conftest import Server, start_server

JSON = {"Content-Type": "application/json"}


def make_keys(database_url: str) -> dict[str, str]:
    async def go() -> dict[str, str]:
        db = Database(database_url)
        try:
            keys = ApiKeys(db)
            return {
                "admin": (await keys.create("tenant-a", ["admin"]))[1],
                "reader": (await keys.create("tenant-a", ["artifact:read"]))[1],
                "writer": (await keys.create("tenant-a", ["artifact:create"]))[1],
                "other": (await keys.create("tenant-b", ["admin"]))[1],
            }
        finally:
            await db.dispose()

    return asyncio.run(go())


@pytest.fixture
def servers(tmp_path: Path, database_url: str) -> Iterator[tuple[Server, Server, dict[str, str]]]:
    keys = make_keys(database_url)
    env = {"ARTIFACTS_RATE_LIMIT": "", "ARTIFACTS_GC_INTERVAL": "0"}
    hot = start_server(tmp_path / "data", database_url=database_url, env=env)
    try:
        cold = start_server(
            tmp_path / "data",
            database_url=database_url,
            env={**env, "ARTIFACTS_HOT_ROUTES": "false"},
        )
        try:
            yield hot, cold, keys
        finally:
            cold.stop()
    finally:
        hot.stop()


def populate(c: httpx.Client) -> dict[str, str]:
    """A few artifacts with every field a list filters on, lineage (one parent named twice), a
    primary, a deleted one, a binary upload; ids by name."""

    def create(name: str, **fields: Any) -> str:
        body = {"workflow_id": "wf-1", "artifact_type": "text", "title": name, "content": name}
        r = c.post("/artifacts", json={**body, **fields})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    ids = {"root": create("root", phase_id="plan", session_id="s-1")}
    ids["child"] = create(
        "child", phase_id="build", derived_from=[ids["root"], ids["root"]], metadata={"k": 1}
    )
    ids["primary"] = create(
        "primary", phase_id="build", artifact_type="markdown", is_primary_deliverable=True
    )
    for i in range(5):
        ids[f"n{i}"] = create(f"n{i}", workflow_id="wf-2", derived_from=[ids["child"]])
    ids["gone"] = create("gone")
    assert c.delete(f"/artifacts/{ids['gone']}").status_code == 200
    files = {"file": ("b.bin", b"\x00\xff" * 10, "application/octet-stream")}
    form = {"workflow_id": "wf-1", "artifact_type": "other", "title": "binary"}
    r = c.post("/artifacts", data=form, files=files)
    assert r.status_code == 201, r.text
    ids["binary"] = r.json()["id"]
    return ids


def requests_for(ids: dict[str, str]) -> list[str]:
    root, child = ids["root"], ids["child"]
    out = []
    for base in ("/artifacts", "/api/v1/artifacts"):
        for name in ("root", "child", "primary", "binary", "gone"):
            out.append(f"{base}/{ids[name]}")
        out += [
            f"{base}/{root}?include_content=false",
            f"{base}/{root}?include_content=true",
            f"{base}/{root}?include_content=no",  # pydantic's boolean, left to the route
            f"{base}/{root}?include_content=maybe",
            f"{base}/{root}?extra=1",
            f"{base}/{root.upper()}",
            f"{base}/{root[:8]}",  # a prefix: the route's
            f"{base}/00000000-0000-4000-8000-000000000000",
            base,
            f"{base}?limit=2",
            f"{base}?limit=1&limit=2",
            f"{base}?limit=0",
            f"{base}?limit=200",
            f"{base}?limit=201",
            f"{base}?limit=abc",
            f"{base}?limit=%2B3",
            f"{base}?workflow_id=wf-2",
            f"{base}?workflow_id=wf-2&limit=2",
            f"{base}?workflow_id=wf-1&phase_id=build",
            f"{base}?phase_id=plan",
            f"{base}?session_id=s-1",
            f"{base}?artifact_type=markdown",
            f"{base}?artifact_type=MARKDOWN",
            f"{base}?artifact_type=nonsense",
            f"{base}?content_type=text%2Fplain",
            f"{base}?content_type=application/octet-stream",
            f"{base}?is_primary_deliverable=true",
            f"{base}?is_primary_deliverable=false",
            f"{base}?is_primary_deliverable=1",
            f"{base}?is_primary_deliverable=maybe",
            f"{base}?derived_from={root}",
            f"{base}?derived_from={child}&limit=2",
            f"{base}?derived_from=unknown",
            f"{base}?created_after=2020-01-01T00:00:00Z",
            f"{base}?created_before=0.5",
            f"{base}?workflow_id=%00",
            f"{base}?workflow_id=",
            f"{base}?cursor=not-a-cursor",
            f"{base}?unknown=1",
            f"{base}?workflow_id=wf-1&workflow_id=wf-2",
            f"{base}?{quote('wörk')}=1",
        ]
    return out


def answer(c: httpx.Client, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers, body; the server's own address (in links) made neutral, so Date and
    Content-Length are left out (the length is checked against the body)."""
    r = c.get(path)
    assert int(r.headers["content-length"]) == len(r.content)
    base = str(c.base_url).rstrip("/")
    headers = sorted(
        (k, v.replace(base, "BASE"))
        for k, v in r.headers.items()
        if k not in ("date", "content-length")
    )
    return r.status_code, headers, r.content.replace(base.encode(), b"BASE")


def test_the_hot_path_answers_exactly_as_the_routes(
    servers: tuple[Server, Server, dict[str, str]],
) -> None:
    hot, cold, keys = servers
    with hot.client(headers={"Authorization": f"Bearer {keys['admin']}"}) as c:
        ids = populate(c)
    paths = requests_for(ids)
    credentials: dict[str, dict[str, str]] = {
        name: {"Authorization": f"Bearer {secret}"} for name, secret in keys.items()
    }
    credentials["none"] = {}
    credentials["bad"] = {"Authorization": "Bearer wfa_not-a-key"}
    credentials["basic"] = {"Authorization": "Basic " + "eDp3ZmFfbm9wZQ=="}
    checked = 0
    statuses: set[int] = set()
    for name, headers in credentials.items():
        with hot.client(headers=headers) as h, cold.client(headers=headers) as k:
            for path in paths:
                a, b = answer(h, path), answer(k, path)
                assert a == b, (name, path)
                statuses.add(a[0])
                checked += 1
        # the cursor a page hands out leads to the same next page on both
        with hot.client(headers=headers) as h, cold.client(headers=headers) as k:
            r = h.get("/artifacts?limit=3")
            if "x-next-cursor" in r.headers:
                nxt = r.headers["x-next-cursor"]
                assert answer(h, f"/artifacts?limit=3&cursor={nxt}") == answer(
                    k, f"/artifacts?limit=3&cursor={nxt}"
                )
                link = httpx.URL(r.headers["link"].split(";")[0].strip("<>"))
                assert link.host == "127.0.0.1"
                assert answer(h, link.raw_path.decode()) == answer(k, link.raw_path.decode())
    assert checked == len(paths) * len(credentials)
    assert {200, 401, 403, 404, 422} <= statuses


CREATES: list[tuple[dict[str, str], bytes]] = [
    (JSON, b'{"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "c"}'),
    (JSON, b'{"workflow_id": "wf", "artifact_type": "MarkDown", "title": "t", "content": "c",'
     b' "phase_id": "p", "is_primary_deliverable": true, "metadata": {"a": [1]}}'),
    (JSON, b'{"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "c",'
     b' "derived_from": ["00000000-0000-4000-8000-000000000000"]}'),
    (JSON, b'{"workflow_id": "wf", "artifact_type": "nonsense", "title": "t", "content": "c"}'),
    (JSON, b'{"workflow_id": "wf", "title": "t"}'),
    (JSON, b'{"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "c", "x": 1}'),
    (JSON, b'{"workflow_id": "wf", "artifact_type": "text", "title": "' + b"t" * 1001 + b'"}'),
    (JSON, b'{"workflow_id": "wf", "artifact_type": "text", "title": "t", "content_type": "0",'
     b' "content": "c"}'),
    (JSON, b"{not json"),
    (JSON, b"[]"),
    (JSON, b""),
    ({"Content-Type": "application/json; charset=utf-8"},
     b'{"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "c"}'),
    ({"Content-Type": "text/plain"}, b"hello"),
    ({**JSON, "Idempotency-Key": "k-1"},
     b'{"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "c"}'),
]  # fmt: skip


def created(r: httpx.Response, base: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """An answer to a create, with what differs between any two creates (the id, the time, the
    server's address) made neutral."""
    body = r.content.replace(base.encode(), b"BASE")
    neutral = [(base, "BASE")]
    if r.status_code == 201:
        made = r.json()
        neutral += [(made["id"], "ID"), (made["created_at"], "TS")]
        for old, new in neutral[1:]:
            body = body.replace(old.encode(), new.encode())
    headers = []
    for k, v in r.headers.items():
        if k not in ("date", "content-length"):
            for old, new in neutral:
                v = v.replace(old, new)
            headers.append((k, v))
    return r.status_code, sorted(headers), body


def test_creates_answer_exactly_as_the_route(
    servers: tuple[Server, Server, dict[str, str]],
) -> None:
    hot, cold, keys = servers
    credentials = {name: {"Authorization": f"Bearer {keys[name]}"} for name in keys}
    credentials["none"] = {}
    statuses: set[int] = set()
    for name, auth in credentials.items():
        for prefix in ("", "/api/v1"):
            for headers, body in CREATES:
                answers = []
                for server in (hot, cold):
                    sent = {**auth, **headers}
                    if "Idempotency-Key" in sent:  # a key of its own: else the second replays
                        sent["Idempotency-Key"] = str(uuid.uuid4())
                    with server.client(headers=sent) as c:
                        r = c.post(f"{prefix}/artifacts", content=body)
                        answers.append(created(r, str(c.base_url).rstrip("/")))
                assert answers[0] == answers[1], (name, prefix, headers, body[:80])
                statuses.add(answers[0][0])
    assert {201, 401, 403, 415, 422} <= statuses
    with cold.client(headers=credentials["admin"]) as c:  # what the hot server stored is whole
        listed = c.get("/artifacts?workflow_id=wf&limit=200").json()
        assert listed and all(a["size_bytes"] == 1 for a in listed)


def test_which_requests_the_hot_path_takes() -> None:
    """The plain reads are the hot path's; anything it would have to validate is the routes'."""

    class App:
        class state:
            settings = Settings()

    scope = {"app": App}
    some_id = "0b6f8d3e-2a4c-4e0f-9c1d-7a5b3c2d1e0f"
    taken = [
        (some_id, b""),
        (some_id, b"include_content=false"),
        (None, b""),
        (None, b"limit=10&workflow_id=w&phase_id=p&session_id=s&content_type=text%2Fplain"),
        (None, b"artifact_type=Markdown&is_primary_deliverable=true&derived_from=x"),
    ]
    for artifact_id, query in taken:
        assert plan(artifact_id, query, scope) is not None, query
    left = [
        (some_id, b"include_content=yes"),
        (some_id, b"x=1"),
        (None, b"limit=0"),
        (None, b"limit=201"),
        (None, b"limit=%2B5"),
        (None, b"limit=1&limit=2"),
        (None, b"created_after=2020-01-01"),
        (None, b"cursor=bogus"),
        (None, b"artifact_type=nonsense"),
        (None, b"is_primary_deliverable=1"),
        (None, b"workflow_id=%00"),
        (None, b"novalue"),
        (None, "w\u00f6rk=1".encode()),
    ]
    for artifact_id, query in left:
        assert plan(artifact_id, query, scope) is None, query

    def post(query: bytes, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"query_string": query, "headers": list(headers)}

    json_type = (b"content-type", b"application/json")
    assert plan_create(post(b"", json_type)) is not None
    assert plan_create(post(b"", (b"content-type", b"Application/JSON; charset=utf-8")))
    for scope_ in (
        post(b"", (b"content-type", b"multipart/form-data; boundary=x")),
        post(b"", (b"content-type", b"application/vnd.x+json")),
        post(b""),
        post(b"x=1", json_type),
        post(b"", json_type, (b"idempotency-key", b"k")),
        post(b"", json_type, json_type),
    ):
        assert plan_create(scope_) is None, scope_
