"""Settings from ARTIFACTS_* environment variables. Built per app: nothing is cached at import."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from storage.db.engine import sqlite_url

ARTIFACT_TYPES = (
    "research_summary", "analysis_report", "plan", "requirements", "design_doc", "code",
    "configuration", "script", "documentation", "readme", "api_spec", "test_results",
    "coverage_report", "text", "markdown", "json", "yaml", "execution_report", "other",
    "github_commit", "github_pr", "github_issue", "github_file", "github_branch", "url",
    "file_path",
)  # fmt: skip

MiB = 1 << 20


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_FORMAT = "30s, 15m, 2h, 7d or a number of seconds"


def parse_duration(value: str | float) -> float:
    """Seconds from `90`, `90s`, `30m`, `1.5h` or `7d`; otherwise a ValueError that names the
    forms accepted (every duration setting and flag reads through here)."""
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            text = value.strip().lower()
            unit = _UNITS.get(text[-1:]) if text else None
            seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < 10**10:
        raise ValueError(f"not a duration: {value!r} (want {DURATION_FORMAT})")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
FOREVER = "forever"


def parse_retention(value: str | float | None) -> float | None:
    """A retention: `forever` (or unset, or empty) is None, keep without end; otherwise a
    duration as parse_duration reads it, 0 included (nothing kept past the next GC)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", FOREVER)):
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f"not a duration: {value!r} (want {FOREVER} or {DURATION_FORMAT})"
        ) from None


Retention = Annotated[float | None, BeforeValidator(parse_retention)]

_ASYNC_DRIVERS = {  # what a database URL may name, and the async driver each means
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_URL_FORMAT = "want postgresql+asyncpg://user:password@host/database or sqlite:////path/to/file.db"


def check_database_url(value: str | None) -> str | None:
    """A database URL with its async driver filled in (`postgresql://` means asyncpg); '' for
    the default. The error never repeats the value: it may hold a password."""
    if value is None or not value.strip():
        return None
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ValueError(f"not a database URL ({_URL_FORMAT})") from None
    driver = _ASYNC_DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(f"{url.drivername}:// is not a supported database ({_URL_FORMAT})")
    return url.set(drivername=driver).render_as_string(hide_password=False)


def check_rate(value: str) -> str:
    """A rate in the `limits` notation (`100/second`, `10 per minute`), or '' for none."""
    from limits import parse

    if value.strip():
        parse(value)  # ValueError names what is wrong
    return value.strip()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARTIFACTS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: Path = Path("var")
    database_url: Annotated[str | None, AfterValidator(check_database_url)] = Field(
        None, description="SQLAlchemy URL; default: SQLite at <data_dir>/artifacts.db"
    )
    public_url: str | None = Field(
        None, description="Base URL clients reach us at (for storage_url); default: request's"
    )
    max_upload_bytes: int = Field(5 << 30, ge=0)
    max_json_body_bytes: int = Field(64 * MiB, ge=1024)
    max_metadata_bytes: int = Field(64 * 1024, ge=2)
    max_inline_content_bytes: int = Field(16 * MiB, ge=0)
    # input limits: a body past one answers 413 payload_too_large (sizes) or a FastAPI-shaped
    # 422 (fields); either way the message states the number. max_upload_bytes,
    # max_json_body_bytes and max_metadata_bytes above are limits too.
    max_title_chars: int = Field(1000, ge=1, description="longest title")
    max_id_chars: int = Field(
        255,
        ge=36,  # an artifact id (a derived_from entry) is 36 characters
        description="longest workflow_id, phase_id, session_id, created_by, derived_from entry",
    )
    max_derived_from: int = Field(100, ge=1, description="most parents one artifact may name")
    max_form_parts: int = Field(100, ge=2, description="most parts in one multipart body")
    max_part_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="largest header block of one multipart part; also the most a multipart body "
        "may carry before its first or after its closing boundary",
    )
    max_form_fields_bytes: int = Field(
        MiB, ge=1024, description="all non-file parts of one multipart body together"
    )
    body_idle_timeout: Duration = Field(
        30.0, description="408 once no byte of a request body arrived for this long; 0: off"
    )
    shutdown_grace: Duration = Field(
        10.0,
        description="at SIGINT/SIGTERM, how long requests in flight may take to finish; then "
        "a body still arriving is answered 503 and the connections still open are closed",
    )
    extra_artifact_types: str = Field("", description="comma-separated types added to the 26")
    log_level: Annotated[  # uvicorn's levels, any case
        Literal["critical", "error", "warning", "info", "debug", "trace"],
        BeforeValidator(lambda v: v.strip().lower() if isinstance(v, str) else v),
    ] = "info"
    # access control
    insecure_no_auth: bool = Field(
        False, description="allow open mode (no API keys) on a non-loopback bind"
    )
    rate_limit: Annotated[str, BeforeValidator(check_rate)] = Field(
        "100/second", description="requests per API key, e.g. 100/second, 5000/minute; '': off"
    )
    verify_reads: bool = Field(
        True, description="hash large downloads while streaming (small ones always are)"
    )
    gc_interval: Duration = Field(3600.0, description="periodic GC in the server; 0: off")
    gc_grace: Duration = Field(3600.0, description="unreferenced blobs younger than this stay")
    deleted_retention: Duration = Field(7 * 86400.0, description="soft-deleted rows kept this long")
    version_retention: Retention = Field(
        None,
        description="replaced versions kept this long after they were replaced (unless lineage "
        "pins them); forever (the default) or a duration, 0: until the next GC",
    )
    idempotency_ttl: Duration = Field(86400.0, description="how long an Idempotency-Key is kept")
    idempotency_lease: Duration = Field(
        30.0, description="a running keyed request's claim lapses this long after its last beat"
    )
    # Signed download links (app/signing.py): the HMAC key, and how long a link lives.
    signing_key: SecretStr | None = Field(
        None, description="hex or base64 of >= 32 random bytes; default: <data_dir>/signing.key"
    )
    download_url_ttl: Duration = Field(
        3600.0, ge=1, description="lifetime of a signed download link when none is asked for"
    )
    download_url_max_ttl: Duration = Field(
        7 * 86400.0, ge=1, description="cap on any link's lifetime, checked again when verifying"
    )
    # Where blobs live (app/blobstore.py): a directory (<data_dir>/blobs) or an S3-compatible
    # bucket. S3 credentials and, unless given here, endpoint and region come from botocore's
    # usual chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE,
    # AWS_ENDPOINT_URL(_S3), AWS_REGION, instance and container roles.
    blob_backend: Literal["filesystem", "s3"] = Field(
        "filesystem", description="filesystem (a directory) or s3 (a bucket)"
    )
    s3_bucket: str | None = Field(None, description="the bucket (s3 backend)")
    s3_prefix: str = Field("", description="key prefix inside the bucket, e.g. artifacts/")
    s3_endpoint_url: str | None = Field(
        None, description="e.g. http://minio:9000; default: AWS, or AWS_ENDPOINT_URL"
    )
    s3_region: str | None = Field(None, description="default: AWS_REGION / the profile's")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="path for most MinIO and Ceph set-ups"
    )
    s3_part_size: int = Field(
        8 * MiB,
        ge=64 * 1024,
        description="multipart part size, and the largest blob stored by one PutObject; "
        "S3 requires >= 5 MiB",
    )
    s3_max_attempts: int = Field(
        4, ge=1, le=10, description="tries per S3 request (botocore standard retries)"
    )
    s3_checksums: bool = Field(
        True, description="send x-amz-checksum-sha256 so the store verifies what it stores"
    )
    crownest_base_url: str = "https://api.crownest.dev"
    crownest_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("CROWNEST_API_KEY", "ARTIFACTS_CROWNEST_API_KEY")
    )
    crownest_max_attempts: int = Field(5, ge=1, le=20)
    crownest_backoff_base: Duration = Field(0.5, ge=0)
    crownest_retry_after_max: Duration = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> Self:
        if self.blob_backend == "s3" and not self.s3_bucket:
            raise ValueError("ARTIFACTS_BLOB_BACKEND=s3 needs ARTIFACTS_S3_BUCKET")
        return self

    @property
    def version_retention_us(self) -> int | None:
        """ARTIFACTS_VERSION_RETENTION in microseconds, as GC takes it; None: for ever."""
        retention = self.version_retention
        return None if retention is None else int(retention * 1e6)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or sqlite_url(self.data_dir.resolve() / "artifacts.db")

    @property
    def artifact_types(self) -> tuple[str, ...]:
        extra = [t.strip().lower() for t in self.extra_artifact_types.split(",") if t.strip()]
        return ARTIFACT_TYPES + tuple(t for t in extra if t not in ARTIFACT_TYPES)
