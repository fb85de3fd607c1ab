"""The suite's shared fixtures (re-exported by tests/conftest.py): real SQLite files, and
PostgreSQL databases when ARTIFACTS_TEST_POSTGRES_URL is set, real blob directories under
tmp_path, the real app in process (`server`, `client`), moto's S3 server for the session.
tests/system/conftest.py swaps `server` for a real `artifacts serve` process."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database, sqlite_url
from storage.db.migrate import upgrade
from tests.support.databases import BACKENDS, POSTGRES_URL, create_pg_database, drop_pg_database
from tests.support.inprocess import AppServer, start_app
from tests.support.s3 import S3_CREDENTIALS, S3_TEST_PART_SIZE, MotoServer, start_moto


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Migrated once per session, copied for each test (a copy is the same database as a fresh
    migration, in a few milliseconds): a SQLite file, and a PostgreSQL template database."""
    templates = {"sqlite": str(tmp_path_factory.mktemp("template") / "artifacts.db")}
    upgrade(sqlite_url(Path(templates["sqlite"])))
    try:
        yield templates
    finally:
        if "postgresql" in templates:
            assert POSTGRES_URL
            drop_pg_database(POSTGRES_URL, templates["postgresql"])


@pytest.fixture(params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: dict[str, str]
) -> Iterator[str]:
    """A migrated, empty database: a SQLite file under tmp_path, or a fresh PostgreSQL database
    (each a copy of one migrated at the start of the session)."""
    if request.param == "sqlite":
        template = Path(migrated_templates["sqlite"])
        assert not template.with_name(template.name + "-wal").exists()
        shutil.copyfile(template, tmp_path / "artifacts.db")
        yield sqlite_url(tmp_path / "artifacts.db")
        return
    assert POSTGRES_URL
    if "postgresql" not in migrated_templates:
        template_url = create_pg_database(POSTGRES_URL)
        upgrade(template_url)
        migrated_templates["postgresql"] = template_url
    url = create_pg_database(POSTGRES_URL, template=migrated_templates["postgresql"])
    try:
        yield url
    finally:
        drop_pg_database(POSTGRES_URL, url)


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


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[AppServer]:
    """The real app in this process over `database_url`, its data under tmp_path/data."""
    srv = start_app(tmp_path / "data", database_url=database_url)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: AppServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server in its own process on 127.0.0.1 for the whole session."""
    moto = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield moto
    finally:
        moto.stop()


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
