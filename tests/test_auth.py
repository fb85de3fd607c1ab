"""Access control, in process: every route's declared scope, every route against every scope set,
revoked and expired keys, Bearer and Basic, rate limits; open mode off loopback, never back by
itself once a key has existed, and its start-up banner said once. Open mode in a real process's
log, the keys CLI, and no secret in logs, bodies or the database:
tests/system/test_auth_server.py."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from app.settings import Settings
from storage.apikeys import Access, ApiKeys, KeysStillActive
from storage.db.engine import Database, sqlite_url
from storage.db.migrate import upgrade
from storage.records import now_us
from tests.support.inprocess import AppServer, start_app
from tests.support.keys import Keys, basic, bearer, make_keys
from tests.support.routes import PUBLIC, ROUTES

# The policy, written out: a route that declares another scope (or none) fails the test below.
POLICY = {
    ("GET", "/artifacts"): "artifact:read",
    ("POST", "/artifacts"): "artifact:create",
    ("GET", "/artifacts/{artifact_id}"): "artifact:read",
    ("GET", "/artifacts/{artifact_id}/content"): "artifact:read",
    ("PUT", "/artifacts/{artifact_id}"): "artifact:create",
    ("DELETE", "/artifacts/{artifact_id}"): "artifact:delete",
    ("POST", "/artifacts/{artifact_id}/upload"): "artifact:create",
    ("GET", "/artifacts/{artifact_id}/download"): "artifact:read",
    ("HEAD", "/artifacts/{artifact_id}/download"): "artifact:read",
    ("GET", "/artifacts/{artifact_id}/lineage"): "artifact:read",
    ("POST", "/artifacts/{artifact_id}/download-url"): "artifact:read",
    ("GET", "/artifacts/{artifact_id}/versions"): "artifact:read",
    ("GET", "/artifacts/{artifact_id}/versions/{version}"): "artifact:read",
    ("GET", "/artifacts/{artifact_id}/versions/{version}/download"): "artifact:read",
    ("HEAD", "/artifacts/{artifact_id}/versions/{version}/download"): "artifact:read",
    ("GET", "/store/workflows"): "artifact:read",
    ("GET", "/store/workflows/{workflow_id}"): "artifact:read",
    ("GET", "/store/workflows/{workflow_id}/deliverables"): "artifact:read",
    ("GET", "/store/workflows/{workflow_id}/export"): "artifact:read",
    ("GET", "/store/events"): "artifact:read",
    ("POST", "/imports/crownest"): "import:run",
    ("GET", "/imports/{import_id}"): "artifact:read",
    ("POST", "/imports/{import_id}/resume"): "import:run",
}


def test_every_route_declares_exactly_the_scope_of_the_policy() -> None:
    seen = set()
    for method, path, declared in ROUTES:
        if path in PUBLIC:
            assert declared == [], (method, path)
            continue
        bare = path.removeprefix("/api/v1")
        assert len(declared) == 1 and len(declared[0]) == 1, (method, path, declared)
        assert POLICY.get((method, bare)) == declared[0][0], (method, path, declared)
        seen.add((method, bare))
    assert seen == set(POLICY)  # and nothing in the policy is served without its check


# -- a server with keys ----------------------------------------------------------------------


@pytest.fixture
def keyed_server(tmp_path: Path, database_url: str) -> Iterator[tuple[AppServer, Keys]]:
    keys = make_keys(database_url)
    srv = start_app(tmp_path / "data", database_url=database_url, env={"ARTIFACTS_RATE_LIMIT": ""})
    try:
        yield srv, keys
    finally:
        srv.stop()


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def call(c: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {} if method in ("POST", "PUT") else None
    return c.request(method, path, json=body, headers=headers)


def assert_401(r: httpx.Response, what: object) -> None:
    assert r.status_code == 401, (what, r.status_code, r.text)
    assert "Bearer" in r.headers["www-authenticate"], what
    if r.request.method != "HEAD":
        assert r.json()["code"] == "invalid_api_key", what


def test_every_route_against_every_scope_set(keyed_server: tuple[AppServer, Keys]) -> None:
    srv, keys = keyed_server
    with srv.client() as c:
        made = c.post(
            "/artifacts",
            json={"workflow_id": "wf", "artifact_type": "text", "title": "t", "content": "x"},
            headers=bearer(keys.admin),
        )
        assert made.status_code == 201, made.text
        ids = {
            "artifact_id": made.json()["id"],
            "workflow_id": "wf",
            "import_id": str(uuid.uuid4()),
            "version": "1",
        }
        for method, path, declared in ROUTES:
            if path in PUBLIC:
                r = c.request(method, fill(path, {"name": "swagger-ui.css"}))
                assert r.status_code == 200, (method, path)
                continue
            needed = declared[0][0]
            target = fill(path, ids)
            if path.endswith("/store/events"):
                target += "?after=0"
            for bad in (None, "wfa_not-a-key", keys.revoked, keys.expired):
                headers = {} if bad is None else bearer(bad)
                assert_401(call(c, method, target, headers), (method, path, bad))
            for scope, key in keys.by_scope.items():
                for headers in (bearer(key), basic(key)):
                    r = call(c, method, target, {**headers, "Accept": "application/json"})
                    if scope in (needed, "admin"):
                        assert r.status_code not in (401, 403), (method, path, scope, r.text)
                    else:
                        assert r.status_code == 403, (method, path, scope, r.status_code)
                        if method != "HEAD":
                            assert r.json()["code"] == "forbidden"
                            assert needed in r.json()["detail"]
            if method != "DELETE":
                r = call(c, method, target, {**bearer(keys.admin), "Accept": "application/json"})
                assert r.status_code not in (401, 403), (method, path, "admin")


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
     "Token abc", "Bearer a b", "bearer wfa_x"],
)  # fmt: skip
def test_malformed_credentials_are_401(keyed_server: tuple[AppServer, Keys], header: str) -> None:
    srv, _ = keyed_server
    with srv.client() as c:
        assert_401(c.get("/artifacts", headers={"Authorization": header}), header)


def test_revoking_a_key_takes_effect_at_once(
    keyed_server: tuple[AppServer, Keys], database_url: str
) -> None:
    srv, keys = keyed_server
    key = keys.by_scope["artifact:read"]
    with srv.client() as c:
        assert c.get("/artifacts", headers=bearer(key)).status_code == 200

        async def revoke() -> None:
            db = Database(database_url)
            try:
                await ApiKeys(db).revoke(key[:12])
            finally:
                await db.dispose()

        asyncio.run(revoke())
        assert_401(c.get("/artifacts", headers=bearer(key)), "revoked")


def test_rate_limit_per_key(tmp_path: Path, database_url: str) -> None:
    keys = make_keys(database_url)
    srv = start_app(
        tmp_path / "data", database_url=database_url, env={"ARTIFACTS_RATE_LIMIT": "5/minute"}
    )
    try:
        with srv.client() as c:
            for _ in range(5):
                assert c.get("/artifacts", headers=bearer(keys.admin)).status_code == 200
            r = c.get("/artifacts", headers=bearer(keys.admin))
            assert r.status_code == 429 and r.json()["code"] == "rate_limited"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert "5 per 1 minute" in r.json()["detail"]
            # the limit is per key: another key is not held back
            assert c.get("/artifacts", headers=bearer(keys.other_tenant)).status_code == 200
    finally:
        srv.stop()


# -- open mode --------------------------------------------------------------------------------

T = TypeVar("T")


def with_keys(database_url: str, job: Callable[[ApiKeys], Awaitable[T]]) -> T:
    """`job` on the real key store of this database (as another process, e.g. the CLI)."""

    async def go() -> T:
        db = Database(database_url)
        try:
            return await job(ApiKeys(db))
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_open_mode_off_loopback_needs_the_flag(tmp_path: Path) -> None:
    from app.asgi import OpenModeRefused, authenticator

    url = sqlite_url(tmp_path / "a.db")
    upgrade(url)

    async def check(**kw: object) -> bool:
        db = Database(url)
        try:
            auth = await authenticator(db, Settings(host="192.0.2.10", **kw))  # type: ignore[arg-type]
            return await auth.is_open()
        finally:
            await db.dispose()

    with pytest.raises(OpenModeRefused):
        asyncio.run(check())
    assert asyncio.run(check(insecure_no_auth=True)) is True
    # a store whose only key is revoked is not open: it starts anywhere, closed
    key, _ = with_keys(url, lambda keys: keys.create("p", ["admin"]))
    with_keys(url, lambda keys: keys.revoke(key.prefix))
    assert asyncio.run(check()) is False
    assert asyncio.run(check(insecure_no_auth=True)) is False


def test_revoking_the_last_key_never_reopens_the_server(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not while it runs, not at its next start: only forgetting the keys (`keys reopen`) does,
    and the running server says so in its log, once."""
    monkeypatch.setattr("app.auth.OPEN_CHECK_SECONDS", 0.0)  # every request re-checks: no waiting
    key, secret = with_keys(database_url, lambda keys: keys.create("proj", ["admin"]))
    with_keys(database_url, lambda keys: keys.create("proj", ["admin"], expires_at=now_us() - 1))
    env = {"ARTIFACTS_RATE_LIMIT": ""}
    srv = start_app(tmp_path / "data", database_url=database_url, env=env)
    try:
        with srv.client() as c:
            assert_401(c.get("/artifacts"), "a key is active")
            assert c.get("/artifacts", headers=bearer(secret)).status_code == 200
            with_keys(database_url, lambda keys: keys.revoke(key.id))
            for _ in range(3):
                assert_401(c.get("/artifacts"), "the last active key was revoked")
            assert_401(c.get("/artifacts", headers=bearer(secret)), "revoked")
    finally:
        srv.stop()
    assert "OPEN MODE" not in srv.log.read_text()

    srv = start_app(tmp_path / "data", database_url=database_url, env=env)
    try:
        with srv.client() as c:
            assert_401(c.get("/artifacts"), "the next start")
        said = srv.log.read_text()
        assert said.count("NO ACTIVE API KEY: all 2 keys on record are revoked or expired") == 1
        assert "OPEN MODE" not in said
        assert with_keys(database_url, lambda keys: keys.forget_all()) == 2
        with srv.client() as c:
            for _ in range(3):
                assert c.get("/artifacts").status_code == 200
        assert srv.log.read_text().count("OPEN MODE again") == 1
    finally:
        srv.stop()


def test_forgetting_the_keys_is_refused_while_one_is_active(database_url: str) -> None:
    active, _ = with_keys(database_url, lambda keys: keys.create("p", ["artifact:read"]))
    revoked, _ = with_keys(database_url, lambda keys: keys.create("p", ["admin"]))
    with_keys(database_url, lambda keys: keys.revoke(revoked.id))
    with pytest.raises(KeysStillActive, match="1 API key is still active"):
        with_keys(database_url, lambda keys: keys.forget_all())
    assert with_keys(database_url, lambda keys: keys.access()) == Access(on_record=2, active=1)
    assert with_keys(database_url, lambda keys: keys.revoke(active.prefix))[1] is True
    assert with_keys(database_url, lambda keys: keys.revoke(active.prefix))[1] is False
    assert with_keys(database_url, lambda keys: keys.access()) == Access(on_record=2, active=0)
    assert with_keys(database_url, lambda keys: keys.forget_all()) == 2
    assert with_keys(database_url, lambda keys: keys.access()).open


def test_the_start_up_banner_is_said_once_per_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`artifacts serve` runs authenticator() on its settings before uvicorn starts, and the
    app's lifespan runs it again on the same settings: one banner. (In a real process:
    tests/system/test_auth_server.py.)"""
    from app.asgi import authenticator

    url = sqlite_url(tmp_path / "a.db")
    upgrade(url)

    async def start(settings: Settings) -> None:
        db = Database(url)
        try:
            await authenticator(db, settings)
        finally:
            await db.dispose()

    def banners() -> int:
        return sum("OPEN MODE" in r.getMessage() for r in caplog.records)

    settings = Settings(data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="artifacts"):
        asyncio.run(start(settings))
        asyncio.run(start(settings))
        assert banners() == 1
        asyncio.run(start(Settings(data_dir=tmp_path)))  # another configuration: said again
        assert banners() == 2
