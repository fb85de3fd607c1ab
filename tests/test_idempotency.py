"""Idempotency-Key: the key lifecycle in storage/idempotency.py, and every write route over HTTP
(replay byte for byte, key reuse, in-progress, failed first requests, expiry, imports), in
process: requests held half-sent go through tests/support/rawhttp.py's ASGI connection."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from storage.artifacts import ArtifactService
from storage.db.engine import Database, run_async
from storage.db.tables import artifacts, idempotency_keys
from storage.errors import LeaseLost
from storage.idempotency import (
    Claimed,
    Completed,
    IdempotencyKeys,
    InProgress,
    StoredResponse,
    purge_expired,
)
from storage.records import NewArtifact
from tests.support.crownest import (  # noqa: F401  (crownest_fake is a fixture)
    FakeCrowNest,
    crownest_fake,
)
from tests.support.databases import count_rows
from tests.support.inprocess import AppServer, start_app
from tests.support.rawhttp import Connection

SECOND = 1_000_000
REPLAYED = "idempotent-replayed"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now


def stored(fingerprint: str = "f" * 64, body: bytes = b'{"ok":true}') -> StoredResponse:
    return StoredResponse(201, [("content-type", "application/json")], body, fingerprint)


# -- the key lifecycle -----------------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> Any:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.mark.anyio
async def test_claim_in_progress_complete_replay(db: Database) -> None:
    clock = Clock()
    keys = IdempotencyKeys(db, lease_us=30 * SECOND, ttl_us=3600 * SECOND, clock=clock)
    first = await keys.begin("open", "k")
    assert isinstance(first, Claimed)
    clock.now += 10 * SECOND
    busy = await keys.begin("open", "k")
    assert busy == InProgress(20 * SECOND)
    await db.run_write(lambda conn: keys.complete(conn, "open", "k", first.token, stored()))
    clock.now += 3000 * SECOND  # past the lease; completion outlives it
    assert await keys.begin("open", "k") == Completed(stored())


@pytest.mark.anyio
async def test_a_lapsed_lease_is_taken_over_and_the_old_holder_cannot_complete(
    db: Database,
) -> None:
    clock = Clock()
    keys = IdempotencyKeys(db, lease_us=30 * SECOND, ttl_us=3600 * SECOND, clock=clock)
    old = await keys.begin("open", "k")
    assert isinstance(old, Claimed)
    clock.now += 31 * SECOND
    new = await keys.begin("open", "k")
    assert isinstance(new, Claimed) and new.token != old.token
    assert not await keys.heartbeat("open", "k", old.token)
    with pytest.raises(LeaseLost):
        await db.run_write(
            lambda conn: keys.complete(conn, "open", "k", old.token, stored("0" * 64))
        )
    await db.run_write(lambda conn: keys.complete(conn, "open", "k", new.token, stored("1" * 64)))
    done = await keys.begin("open", "k")
    assert isinstance(done, Completed) and done.response.fingerprint == "1" * 64


@pytest.mark.anyio
async def test_heartbeat_keeps_the_lease(db: Database) -> None:
    clock = Clock()
    keys = IdempotencyKeys(db, lease_us=30 * SECOND, ttl_us=3600 * SECOND, clock=clock)
    held = await keys.begin("open", "k")
    assert isinstance(held, Claimed)
    for _ in range(5):
        clock.now += 20 * SECOND
        assert await keys.heartbeat("open", "k", held.token)
    assert await keys.begin("open", "k") == InProgress(30 * SECOND)


@pytest.mark.anyio
async def test_release_frees_a_running_key_but_never_a_completed_one(db: Database) -> None:
    keys = IdempotencyKeys(db, lease_us=30 * SECOND, ttl_us=3600 * SECOND)
    held = await keys.begin("open", "a")
    assert isinstance(held, Claimed)
    await keys.release("open", "a", held.token)
    assert isinstance(await keys.begin("open", "a"), Claimed)
    done = await keys.begin("open", "b")
    assert isinstance(done, Claimed)
    await db.run_write(lambda conn: keys.complete(conn, "open", "b", done.token, stored()))
    await keys.release("open", "b", done.token)
    assert await keys.begin("open", "b") == Completed(stored())


class _AfterFirstStatement:
    """A connection that runs `then` right after its first statement (to force an interleaving
    between two processes' transactions)."""

    def __init__(self, conn: Any, then: Any) -> None:
        self._conn, self._then, self._fired = conn, then, False

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = self._conn.execute(*args, **kwargs)
        if not self._fired:
            self._fired = True
            self._then()
        return result


@pytest.mark.anyio
async def test_a_key_released_between_our_insert_and_our_lock_is_claimed(
    database_url: str,
) -> None:
    """Replica B's retry collides with A's claim (INSERT .. ON CONFLICT DO NOTHING inserts
    nothing); before B locks the row, A's first attempt fails and releases the key. B must claim
    it, not fail (PostgreSQL's READ COMMITTED lets the row vanish between the two statements;
    SQLite's writer lock never does)."""
    db_a, db_b = Database(database_url), Database(database_url)
    a = IdempotencyKeys(db_a, lease_us=30 * SECOND, ttl_us=3600 * SECOND)
    b = IdempotencyKeys(db_b, lease_us=30 * SECOND, ttl_us=3600 * SECOND)
    try:
        held = await a.begin("open", "k")
        assert isinstance(held, Claimed)
        plain_write = db_b.run_write

        def release() -> None:
            run_async(a.release, "open", "k", held.token)

        async def interleaved(work: Any) -> Any:
            return await plain_write(lambda conn: work(_AfterFirstStatement(conn, release)))

        if db_b.dialect == "postgresql":  # SQLite: A's release would wait for B's writer lock
            db_b.run_write = interleaved  # type: ignore[method-assign]
        else:
            await a.release("open", "k", held.token)
        assert isinstance(await b.begin("open", "k"), Claimed)
    finally:
        await db_a.dispose()
        await db_b.dispose()


@pytest.mark.anyio
async def test_keys_expire_after_the_window_and_gc_purges_them(db: Database) -> None:
    clock = Clock()
    keys = IdempotencyKeys(db, lease_us=30 * SECOND, ttl_us=3600 * SECOND, clock=clock)
    for key in ("old", "young"):
        held = await keys.begin("open", key)
        assert isinstance(held, Claimed)
        token = held.token
        await db.run_write(lambda conn, k=key, t=token: keys.complete(conn, "open", k, t, stored()))
        clock.now += 1800 * SECOND
    clock.now += 1 * SECOND  # "old" is 3601 s old, "young" 1801 s
    assert await purge_expired(db, clock.now) == 1
    query = sa.select(idempotency_keys.c.key)
    left = await db.run_read(lambda conn: conn.execute(query).scalars().all())
    assert left == ["young"]
    assert isinstance(await keys.begin("open", "old"), Claimed)  # a new request now
    clock.now += 3600 * SECOND
    assert isinstance(await keys.begin("open", "young"), Claimed)  # expired, not yet purged


@pytest.mark.anyio
async def test_scopes_never_share_a_key(db: Database) -> None:
    keys = IdempotencyKeys(db, lease_us=30 * SECOND, ttl_us=3600 * SECOND)
    a = await keys.begin("tenant-a", "same")
    b = await keys.begin("tenant-b", "same")
    assert isinstance(a, Claimed) and isinstance(b, Claimed)
    await db.run_write(
        lambda conn: keys.complete(conn, "tenant-a", "same", a.token, stored("a" * 64))
    )
    assert isinstance(await keys.begin("tenant-b", "same"), InProgress)
    done = await keys.begin("tenant-a", "same")
    assert isinstance(done, Completed) and done.response.fingerprint == "a" * 64


@pytest.mark.anyio
async def test_the_key_completes_or_rolls_back_with_the_write(
    db: Database, service: ArtifactService
) -> None:
    keys = IdempotencyKeys(service.db, lease_us=30 * SECOND, ttl_us=3600 * SECOND)
    held = await keys.begin("open", "k")
    assert isinstance(held, Claimed)
    new = NewArtifact(workflow_id="w", artifact_type="text", title="t", content_type="text/plain")

    def complete_then_fail(conn: Any, _artifact: Any) -> None:
        keys.complete(conn, "open", "k", held.token, stored())
        raise RuntimeError("the write fails after the key was recorded")

    with pytest.raises(RuntimeError):
        await service.create(new, b"x", hook=complete_then_fail)
    count = sa.select(sa.func.count()).select_from(artifacts)
    assert await service.db.run_read(lambda conn: conn.execute(count).scalar()) == 0
    assert isinstance(await keys.begin("open", "k"), InProgress)  # still ours, not completed

    def lost(conn: Any, _artifact: Any) -> None:
        keys.complete(conn, "open", "k", "not-the-token", stored())

    with pytest.raises(LeaseLost):
        await service.create(new, b"x", hook=lost)
    assert await service.db.run_read(lambda conn: conn.execute(count).scalar()) == 0

    def record(conn: Any, _artifact: Any) -> None:
        keys.complete(conn, "open", "k", held.token, stored())

    made = await service.create(new, b"x", hook=record)
    assert (await service.get(made.id)).id == made.id
    assert await keys.begin("open", "k") == Completed(stored())


# -- every write route over HTTP -------------------------------------------------------------

CREATE = {"workflow_id": "wf", "artifact_type": "text", "title": "report", "content": "hello"}
FORM = {"workflow_id": "wf", "artifact_type": "other", "title": "upload"}


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **headers}


def assert_replay(first: httpx.Response, again: httpx.Response) -> None:
    assert REPLAYED not in first.headers
    assert again.headers.get(REPLAYED) == "true", again.text
    assert again.status_code == first.status_code
    assert again.content == first.content  # byte for byte
    for name in ("content-type", "location"):
        assert again.headers.get(name) == first.headers.get(name)


def tallies(database_url: str) -> tuple[int, ...]:
    return tuple(count_rows(database_url, t) for t in ("artifacts", "events", "blobs"))


def test_json_create_is_replayed_and_creates_one_artifact(
    client: httpx.Client, database_url: str
) -> None:
    first = client.post("/artifacts", json=CREATE, headers=keyed("create-1"))
    assert first.status_code == 201, first.text
    before = tallies(database_url)
    reordered = dict(reversed(list(CREATE.items())))  # same JSON value, other bytes
    again = client.post("/artifacts", json=reordered, headers=keyed("create-1"))
    assert_replay(first, again)
    via_v1 = client.post("/api/v1/artifacts", json=CREATE, headers=keyed("create-1"))
    assert_replay(first, via_v1)
    assert tallies(database_url) == before
    unkeyed = client.post("/artifacts", json=CREATE)
    assert unkeyed.status_code == 201 and unkeyed.json()["id"] != first.json()["id"]


def test_multipart_create_retry_with_a_new_boundary_is_the_same_request(
    client: httpx.Client, database_url: str
) -> None:
    files = {"file": ("notes.bin", b"\x00\x01payload" * 1000, "application/octet-stream")}
    first = client.post("/artifacts", data=FORM, files=files, headers=keyed("form-1"))
    assert first.status_code == 201, first.text
    before = tallies(database_url)
    # httpx draws a fresh random boundary for every request: the bytes differ, the meaning not
    again = client.post("/artifacts", data=FORM, files=files, headers=keyed("form-1"))
    assert_replay(first, again)
    assert tallies(database_url) == before
    other = {"file": ("notes.bin", b"other bytes", "application/octet-stream")}
    reused = client.post("/artifacts", data=FORM, files=other, headers=keyed("form-1"))
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    renamed = client.post(
        "/artifacts", data={**FORM, "title": "x"}, files=files, headers=keyed("form-1")
    )
    assert renamed.json()["code"] == "idempotency_key_reused"
    assert tallies(database_url) == before


def test_uploads_put_and_delete_are_replayed(client: httpx.Client, database_url: str) -> None:
    aid = client.post("/artifacts", json=CREATE).json()["id"]
    raw = {"content-type": "text/csv"}
    first = client.post(f"/artifacts/{aid}/upload", content=b"a,b\n", headers=keyed("up-1", **raw))
    assert first.status_code == 200, first.text
    again = client.post(f"/artifacts/{aid}/upload", content=b"a,b\n", headers=keyed("up-1", **raw))
    assert_replay(first, again)
    other = client.post(f"/artifacts/{aid}/upload", content=b"a,c\n", headers=keyed("up-1", **raw))
    assert other.json()["code"] == "idempotency_key_reused"

    files = {"file": ("x.txt", b"multi", "text/plain")}
    first = client.post(f"/artifacts/{aid}/upload", files=files, headers=keyed("up-2"))
    assert first.status_code == 200, first.text
    assert_replay(
        first, client.post(f"/artifacts/{aid}/upload", files=files, headers=keyed("up-2"))
    )

    first = client.put(f"/artifacts/{aid}", json={"title": "t2"}, headers=keyed("put-1"))
    assert first.status_code == 200, first.text
    client.put(f"/artifacts/{aid}", json={"title": "t3"})  # a later change by someone else
    again = client.put(f"/artifacts/{aid}", json={"title": "t2"}, headers=keyed("put-1"))
    assert_replay(first, again)
    assert client.get(f"/artifacts/{aid}").json()["title"] == "t3"  # the replay wrote nothing

    before = tallies(database_url)
    first = client.delete(f"/artifacts/{aid}", headers=keyed("del-1"))
    assert first.status_code == 200, first.text
    assert_replay(first, client.delete(f"/artifacts/{aid}", headers=keyed("del-1")))
    assert client.delete(f"/artifacts/{aid}").status_code == 404
    assert count_rows(database_url, "events") == before[1] + 1
    # a key names one request: used on another route, it is refused
    reused = client.delete(f"/artifacts/{aid}", headers=keyed("put-1"))
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")


@pytest.mark.parametrize(
    ("key", "ok"),
    [("", False), ("x" * 256, False), ("tab\there", False), ("x" * 255, True), ("a b~!", True)],
)
def test_key_syntax(client: httpx.Client, key: str, ok: bool) -> None:
    r = client.post("/artifacts", json=CREATE, headers={"Idempotency-Key": key})
    if ok:
        assert r.status_code == 201, r.text
        return
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_non_ascii_key_is_a_422(server: AppServer) -> None:
    body = httpx.Request("POST", "/", json=CREATE).content
    with Connection(server.url) as conn:
        conn.start(
            "POST",
            "/artifacts",
            [("Content-Type", "application/json"), ("Idempotency-Key", "cl\xe9")],
            content_length=len(body),
        )
        conn.send(body)
        r = conn.response()
    assert r.status == 422 and r.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_a_failed_first_request_stores_nothing_and_frees_the_key(
    client: httpx.Client, database_url: str
) -> None:
    bad = client.post("/artifacts", json={**CREATE, "artifact_type": "nope"}, headers=keyed("k"))
    assert bad.status_code == 422
    missing = client.post(
        "/artifacts/00000000-0000-0000-0000-000000000000/upload",
        content=b"x",
        headers=keyed("k2", **{"content-type": "text/plain"}),
    )
    assert missing.status_code == 404
    declared = hashlib.sha256(b"other").hexdigest()
    mismatch = client.post(
        "/artifacts",
        data=FORM,
        files={"file": ("f", b"data", "text/plain")},
        headers=keyed("k3", **{"x-content-sha256": declared}),
    )
    assert mismatch.json()["code"] == "digest_mismatch"
    assert count_rows(database_url, "idempotency_keys") == 0
    good = client.post("/artifacts", json=CREATE, headers=keyed("k"))
    assert good.status_code == 201 and REPLAYED not in good.headers


def _start_keyed_upload(server: AppServer, aid: str, key: str, total: int) -> Connection:
    conn = Connection(server.url)
    headers = [("Content-Type", "application/octet-stream"), ("Idempotency-Key", key)]
    conn.start("POST", f"/artifacts/{aid}/upload", headers, content_length=total)
    return conn


def _wait_for_claim(database_url: str) -> None:
    deadline = time.monotonic() + 10
    while count_rows(database_url, "idempotency_keys") == 0:
        assert time.monotonic() < deadline, "the first request never claimed its key"
        time.sleep(0.02)


def test_a_retry_while_the_first_runs_is_409_then_replays(
    server: AppServer, client: httpx.Client, database_url: str
) -> None:
    aid = client.post("/artifacts", json=CREATE).json()["id"]
    data = b"z" * 200_000
    first = _start_keyed_upload(server, aid, "slow", len(data))
    try:
        first.send(data[:1000])
        _wait_for_claim(database_url)
        hdrs = keyed("slow", **{"content-type": "application/octet-stream"})
        busy = client.post(f"/artifacts/{aid}/upload", content=data, headers=hdrs)
        assert busy.status_code == 409, busy.text
        assert busy.json()["code"] == "idempotency_request_in_progress"
        assert 1 <= int(busy.headers["retry-after"]) <= 30
        first.send(data[1000:])
        done = first.response()
        assert done.status == 200, done.body
    finally:
        first.close()
    again = client.post(f"/artifacts/{aid}/upload", content=data, headers=hdrs)
    assert again.headers[REPLAYED] == "true" and again.content == done.body


def test_a_client_that_goes_away_frees_its_key(
    server: AppServer, client: httpx.Client, database_url: str
) -> None:
    aid = client.post("/artifacts", json=CREATE).json()["id"]
    data = b"q" * 100_000
    first = _start_keyed_upload(server, aid, "gone", len(data))
    first.send(data[:500])
    _wait_for_claim(database_url)
    first.close()
    deadline = time.monotonic() + 10
    while count_rows(database_url, "idempotency_keys"):
        assert time.monotonic() < deadline, "the key stayed claimed after the client left"
        time.sleep(0.05)
    hdrs = keyed("gone", **{"content-type": "application/octet-stream"})
    r = client.post(f"/artifacts/{aid}/upload", content=data, headers=hdrs)
    assert r.status_code == 200 and REPLAYED not in r.headers


def test_keys_expire_after_the_configured_window(tmp_path: Path, database_url: str) -> None:
    srv = start_app(
        tmp_path / "data",
        database_url=database_url,
        env={"ARTIFACTS_IDEMPOTENCY_TTL": "1s", "ARTIFACTS_GC_INTERVAL": "0"},
    )
    try:
        with srv.client() as c:
            first = c.post("/artifacts", json=CREATE, headers=keyed("short"))
            assert c.post("/artifacts", json=CREATE, headers=keyed("short")).headers[REPLAYED]
            time.sleep(1.2)
            later = c.post("/artifacts", json=CREATE, headers=keyed("short"))
            assert later.status_code == 201 and REPLAYED not in later.headers
            assert later.json()["id"] != first.json()["id"]
    finally:
        srv.stop()


def test_import_jobs_are_replayed_not_started_twice(
    tmp_path: Path,
    database_url: str,
    crownest_fake: FakeCrowNest,  # noqa: F811
) -> None:
    sbx = crownest_fake.state.add_sandbox()
    crownest_fake.state.add_artifacts(sbx.id, 3)
    env = {
        "CROWNEST_API_KEY": crownest_fake.api_key,
        "ARTIFACTS_CROWNEST_BASE_URL": crownest_fake.base_url,
    }
    srv = start_app(tmp_path / "data", database_url=database_url, env=env)
    try:
        with srv.client() as c:
            body = {"sandbox_id": sbx.id, "workflow_id": "wf"}
            first = c.post("/imports/crownest", json=body, headers=keyed("imp"))
            assert first.status_code == 202, first.text
            assert_replay(first, c.post("/imports/crownest", json=body, headers=keyed("imp")))
            assert count_rows(database_url, "imports") == 1
            import_id = first.json()["import_id"]
            deadline = time.monotonic() + 30
            while c.get(f"/imports/{import_id}").json()["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            resumed = c.post(f"/imports/{import_id}/resume", headers=keyed("res"))
            assert resumed.status_code == 202, resumed.text
            assert_replay(resumed, c.post(f"/imports/{import_id}/resume", headers=keyed("res")))
            other = c.post(
                "/imports/crownest", json={**body, "workflow_id": "x"}, headers=keyed("imp")
            )
            assert other.json()["code"] == "idempotency_key_reused"
            assert count_rows(database_url, "imports") == 1
    finally:
        srv.stop()
