"""Access control: every route's declared scope, every route against every scope set, revoked
and expired keys, Bearer and Basic, open mode and its limits, rate limits, key storage, and no
secret in logs, bodies or the database."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.asgi import create_app
from app.settings import Settings
from storage.apikeys import SCOPES, ApiKeys
from storage.db.engine import Database
from storage.records import now_us
from tests.conftest import ROOT, Server, start_server
from tests.fake_crownest import (  # noqa: F401  (crownest_fake is a fixture)
    FakeCrowNest,
    Fault,
    crownest_fake,
)

PUBLIC = {"/healthz", "/readyz", "/schema/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
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
    ("GET", "/workflows"): "artifact:read",
    ("GET", "/workflows/{workflow_id}"): "artifact:read",
    ("GET", "/workflows/{workflow_id}/deliverables"): "artifact:read",
    ("GET", "/workflows/{workflow_id}/export"): "artifact:read",
    ("GET", "/events"): "artifact:read",
    ("POST", "/imports/crownest"): "import:run",
    ("GET", "/imports/{import_id}"): "artifact:read",
    ("POST", "/imports/{import_id}/resume"): "import:run",
}


def app_routes() -> list[tuple[str, str, list[tuple[str, ...]]]]:
    """(method, path, scopes declared) for every route the app serves, nested routers included."""
    app = create_app(Settings(data_dir=Path("/nonexistent")))

    def flatten(routes: list) -> Iterator:
        for r in routes:
            if hasattr(r, "effective_candidates"):
                yield from flatten(r.effective_candidates())
            else:
                yield r

    out = []
    for route in flatten(app.routes):
        declared: list[tuple[str, ...]] = []

        def walk(dependant, found: list[tuple[str, ...]]) -> None:
            for sub in dependant.dependencies:
                if getattr(sub.call, "__name__", "") in ("authenticate", "authenticate_link"):
                    found.append(tuple(sub.own_oauth_scopes or ()))
                walk(sub, found)

        if getattr(route, "dependant", None) is not None:
            walk(route.dependant, declared)
        for method in sorted(route.methods or []):
            if method == "HEAD" and "GET" in (route.methods or set()) and route.path in PUBLIC:
                continue
            out.append((method, route.path, declared))
    return out


ROUTES = app_routes()


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


@dataclass
class Keys:
    by_scope: dict[str, str]
    admin: str
    other_tenant: str
    revoked: str
    expired: str


def make_keys(database_url: str) -> Keys:
    async def go() -> Keys:
        db = Database(database_url)
        try:
            keys = ApiKeys(db)
            by_scope = {s: (await keys.create("proj", [s]))[1] for s in SCOPES}
            admin = (await keys.create("proj", ["admin"]))[1]
            other = (await keys.create("other", ["admin"]))[1]
            revoked_key, revoked = await keys.create("proj", list(SCOPES))
            await keys.revoke(revoked_key.id)
            expired = (await keys.create("proj", ["admin"], expires_at=now_us() - 1))[1]
            return Keys(by_scope, admin, other, revoked, expired)
        finally:
            await db.dispose()

    return asyncio.run(go())


@pytest.fixture
def keyed_server(tmp_path: Path, database_url: str) -> Iterator[tuple[Server, Keys]]:
    keys = make_keys(database_url)
    srv = start_server(
        tmp_path / "data", database_url=database_url, env={"ARTIFACTS_RATE_LIMIT": ""}
    )
    try:
        yield srv, keys
    finally:
        srv.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def basic(key: str, user: str = "syn") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


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


def test_every_route_against_every_scope_set(keyed_server: tuple[Server, Keys]) -> None:
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
        }
        for method, path, declared in ROUTES:
            if path in PUBLIC:
                r = c.request(method, path)
                assert r.status_code == 200, (method, path)
                continue
            needed = declared[0][0]
            target = fill(path, ids)
            if path.endswith("/events"):
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
def test_malformed_credentials_are_401(keyed_server: tuple[Server, Keys], header: str) -> None:
    srv, _ = keyed_server
    with srv.client() as c:
        assert_401(c.get("/artifacts", headers={"Authorization": header}), header)


def test_revoking_a_key_takes_effect_at_once(
    keyed_server: tuple[Server, Keys], database_url: str
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
    srv = start_server(
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


# -- open mode -------------------------------------------------------------------------------


def test_open_mode_on_loopback_says_so_and_ends_with_the_first_key(
    tmp_path: Path, database_url: str
) -> None:
    srv = start_server(
        tmp_path / "data", database_url=database_url, env={"ARTIFACTS_LOG_LEVEL": "info"}
    )
    try:
        with srv.client() as c:
            assert c.get("/artifacts").status_code == 200
            assert "OPEN MODE" in srv.log.read_text()

            async def first_key() -> str:
                db = Database(database_url)
                try:
                    return (await ApiKeys(db).create("proj", ["artifact:read"]))[1]
                finally:
                    await db.dispose()

            key = asyncio.run(first_key())
            deadline = time.monotonic() + 5
            while c.get("/artifacts").status_code != 401:
                assert time.monotonic() < deadline, "open mode outlived the first key"
                time.sleep(0.1)
            assert c.get("/artifacts", headers=bearer(key)).status_code == 200
    finally:
        srv.stop()


def cli(*args: str, data: Path, database_url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACTS_")}
    env["ARTIFACTS_DATA_DIR"] = str(data)
    if database_url:
        env["ARTIFACTS_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_open_mode_is_refused_off_loopback(tmp_path: Path) -> None:
    done = cli("serve", "--host", "0.0.0.0", "--port", "9", data=tmp_path / "data")
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "--insecure-no-auth" in done.stderr
    assert "Traceback" not in done.stderr


def test_open_mode_off_loopback_needs_the_flag(tmp_path: Path) -> None:
    from app.asgi import OpenModeRefused, authenticator
    from storage.db.engine import sqlite_url
    from storage.db.migrate import upgrade

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


# -- the keys CLI, and no secret anywhere in clear -------------------------------------------


def test_keys_cli_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = cli(
        "keys", "create", "--project", "proj", "--scopes", "artifact:read,artifact:create",
        "--expires", "30d", "--name", "ci", data=data,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert re.fullmatch(r"wfa_[A-Za-z0-9_-]{43}", secret)
    listed = cli("keys", "list", "--json", data=data)
    assert listed.returncode == 0 and secret not in listed.stdout
    (entry,) = json.loads(listed.stdout)
    assert entry["prefix"] == secret[:12] and entry["project"] == "proj"
    assert entry["scopes"] == ["artifact:create", "artifact:read"] and entry["expires_at"]
    db_bytes = b"".join(p.read_bytes() for p in data.glob("artifacts.db*"))
    assert secret.encode() not in db_bytes and secret[12:].encode() not in db_bytes
    bad = cli("keys", "create", "--project", "p", "--scopes", "artifact:write", data=data)
    assert bad.returncode == 2 and "scopes must be some of" in bad.stderr
    assert cli("keys", "revoke", "nope", data=data).returncode == 1
    gone = cli("keys", "revoke", secret[:12], data=data)
    assert gone.returncode == 0, gone.stderr
    assert "revoked" in cli("keys", "list", data=data).stdout


def test_no_secret_in_logs_or_error_bodies(keyed_server: tuple[Server, Keys]) -> None:
    srv, keys = keyed_server
    wrong = "wfa_" + "Z" * 43
    with srv.client() as c:
        bodies = []
        for key in (keys.admin, wrong, keys.revoked):
            for headers in (bearer(key), basic(key)):
                for method, path in (("GET", "/artifacts"), ("GET", "/artifacts/nope")):
                    r = c.request(method, path, headers=headers)
                    bodies.append(r.text + str(dict(r.headers)))
        bodies.append(c.get("/artifacts", headers=bearer(keys.by_scope["import:run"])).text)
    srv.stop()
    log = srv.log.read_text()
    for key in (keys.admin, wrong, keys.revoked, keys.by_scope["import:run"]):
        assert key not in log and key[12:] not in log
        assert all(key not in b for b in bodies)


def test_the_crownest_key_never_leaves_in_clear(
    tmp_path: Path,
    database_url: str,
    crownest_fake: FakeCrowNest,  # noqa: F811
) -> None:
    """An import job that meets failures (a 500 that stays, a short body) still writes the
    CrowNest key to no log line, no response body and no database row."""
    st = crownest_fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 4)
    st.inject("download", Fault.server_error(500), Fault.server_error(500), artifact_id=ups[0].id)
    st.inject("download", Fault.short_body(missing=2), artifact_id=ups[1].id)
    env = {
        "CROWNEST_API_KEY": crownest_fake.api_key,
        "ARTIFACTS_CROWNEST_BASE_URL": crownest_fake.base_url,
        "ARTIFACTS_CROWNEST_BACKOFF_BASE": "0.01",
        "ARTIFACTS_CROWNEST_MAX_ATTEMPTS": "2",
        "ARTIFACTS_LOG_LEVEL": "debug",
    }
    srv = start_server(tmp_path / "data", database_url=database_url, env=env)
    bodies: list[str] = []
    try:
        with srv.client() as c:
            r = c.post("/imports/crownest", json={"sandbox_id": sbx.id, "workflow_id": "w"})
            bodies.append(r.text)
            job = r.json()["import_id"]
            deadline = time.monotonic() + 30
            while (state := c.get(f"/imports/{job}")).json()["status"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            bodies.append(state.text)
            assert state.json()["counts"]["failed"] == 2
            bodies.append(
                c.get("/events", params={"after": 0}, headers={"Accept": "application/json"}).text
            )
            bodies.append(c.get("/artifacts").text)
    finally:
        srv.stop()
    secret = crownest_fake.api_key
    assert secret not in srv.log.read_text()
    assert all(secret not in b for b in bodies)
    if database_url.startswith("sqlite"):
        dumped = b"".join(p.read_bytes() for p in Path(tmp_path).rglob("artifacts.db*"))
    else:
        from tests.test_migrations import query

        dumped = repr(
            [
                query(database_url, f"SELECT * FROM {t}")
                for t in ("imports", "import_items", "events")
            ]
        ).encode()
    assert secret.encode() not in dumped
