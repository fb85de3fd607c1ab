"""The suite's fixtures live in tests/support/fixtures.py; this makes them reachable from every
test module (tests/system/conftest.py overrides `server` with a real process)."""

from tests.support.fixtures import (  # noqa: F401  (fixtures)
    anyio_backend,
    blob_dir,
    client,
    database_url,
    migrated_templates,
    moto_server,
    s3_bucket,
    s3_env,
    server,
    service,
)
