"""Shared fixtures: real SQLite files (and PostgreSQL when ARTIFACTS_TEST_POSTGRES_URL is set),
real blob directories under tmp_path, and real servers on 127.0.0.1 (uvicorn subprocesses)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database, sqlite_url
from storage.db.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("ARTIFACTS_TEST_POSTGRES_URL")

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="ARTIFACTS_TEST_POSTGRES_URL not set"),
        ],
    ),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _create_pg_database(base_url: str) -> str:
    """A fresh, empty database next to the one in base_url; returns its async URL."""
    import asyncio

    import asyncpg

    url = make_url(base_url)
    name = f"artifacts_test_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database,
        )
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return url.set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(base_url: str, test_url: str) -> None:
    import asyncio

    import asyncpg

    url = make_url(base_url)
    name = make_url(test_url).database

    async def drop() -> None:
        conn = await asyncpg.connect(
            host=url.host,
            port=url.port or 5432,
            user=url.username,
            password=url.password,
            database=url.database,
        )
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "artifacts.db")
        upgrade(url)
        yield url
        return
    assert POSTGRES_URL
    url = _create_pg_database(POSTGRES_URL)
    try:
        upgrade(url)
        yield url
    finally:
        _drop_pg_database(POSTGRES_URL, url)


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
async def service(database_url: str, blob_dir: Path) -> AsyncIterator[ArtifactService]:
    db = Database(database_url)
    try:
        yield ArtifactService(db, FilesystemBlobStore(blob_dir))
    finally:
        await db.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_server(
    data_dir: Path, *, database_url: str | None = None, env: dict[str, str] | None = None
) -> Server:
    """`artifacts serve` in its own process group on a free loopback port; waits for /healthz."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"server-{port}.log"
    environ = {
        **os.environ,
        "ARTIFACTS_HOST": "127.0.0.1",
        "ARTIFACTS_PORT": str(port),
        "ARTIFACTS_DATA_DIR": str(data_dir),
        "ARTIFACTS_LOG_LEVEL": "warning",
        **(env or {}),
    }
    if database_url:
        environ["ARTIFACTS_DATABASE_URL"] = database_url
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    server = Server(f"http://127.0.0.1:{port}", data_dir, process, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    srv = start_server(tmp_path / "data", database_url=database_url)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def count_rows(database_url: str, table: str) -> int:
    """Row count through a short-lived sync-free check (used to show nothing changed)."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def count() -> int:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                return int(
                    (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()
                )
        finally:
            await engine.dispose()

    return asyncio.run(count())


# -- S3: moto's server on a loopback port, one bucket per test ---------------------------------

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
S3_TEST_PART_SIZE = 64 * 1024  # small parts so multipart paths run on small blobs


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]

    @functools.cached_property
    def _client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def client(self) -> Any:
        """A boto3 S3 client of the moto server (synchronous; for set-up and raw checks)."""
        return self._client


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server in its own process on 127.0.0.1 for the whole session (parts down to
    1 KiB accepted, so multipart uploads are testable with small blobs)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, **S3_CREDENTIALS, "S3_UPLOAD_PART_MIN_SIZE": "1024"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited:\n{log.read_text()}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                raise RuntimeError(f"moto did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
    try:
        yield MotoServer(endpoint, process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> str:
    """A new, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    moto_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_env(moto_server: MotoServer, s3_bucket: str) -> dict[str, str]:
    """The environment that points a server or the CLI at that bucket."""
    return {
        **S3_CREDENTIALS,
        "ARTIFACTS_BLOB_BACKEND": "s3",
        "ARTIFACTS_S3_BUCKET": s3_bucket,
        "ARTIFACTS_S3_PREFIX": "store/",
        "ARTIFACTS_S3_ENDPOINT_URL": moto_server.endpoint,
        "ARTIFACTS_S3_REGION": "us-east-1",
        "ARTIFACTS_S3_PART_SIZE": str(S3_TEST_PART_SIZE),
    }
