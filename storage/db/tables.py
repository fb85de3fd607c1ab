"""The SQL schema, as SQLAlchemy Core tables (Core, not the ORM: the ORM costs 4-7x per round
trip here and we need none of its identity-map features). Alembic migrations create these; the
tables here must match the newest migration (a test compares them).

Times are integer microseconds since the Unix epoch (UTC): exact, portable, and a cheap keyset.
"""

from __future__ import annotations

import sqlalchemy as sa

# Artifact ids compare bytewise on every backend ("C" collation on PostgreSQL), so the range
# scan behind id-prefix lookups is exact whatever the database's locale.
ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")
# Every artifact, event and import job belongs to one tenant (an API key's project); every query
# names it. Open mode (no API keys) is the tenant "default".
DEFAULT_TENANT = "default"


def tenant_column() -> sa.Column[str]:
    return sa.Column(
        "tenant", sa.String(255), nullable=False, server_default=sa.text(f"'{DEFAULT_TENANT}'")
    )


metadata = sa.MetaData()

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

artifacts = sa.Table(
    "artifacts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("workflow_id", sa.Text, nullable=False),
    sa.Column("phase_id", sa.Text),
    sa.Column("session_id", sa.Text),
    sa.Column("artifact_type", sa.String(64), nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("filename", sa.Text),
    sa.Column("content_hash", sa.String(64), sa.ForeignKey("blobs.digest"), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("is_text", sa.Boolean, nullable=False),
    sa.Column("is_primary_deliverable", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.Text),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", sa.BigInteger),
    sa.Column("source", sa.Text),  # e.g. "crownest" for an imported artifact
    sa.Column("source_ref", sa.Text),  # the upstream id
    tenant_column(),
    # the current version's number (artifact_versions); content_hash .. is_text describe it
    sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
    sa.Index("ix_artifacts_order", "tenant", "created_at", "id"),
    sa.Index("ix_artifacts_workflow", "tenant", "workflow_id", "created_at", "id"),
    sa.Index(
        "ix_artifacts_workflow_phase", "tenant", "workflow_id", "phase_id", "created_at", "id"
    ),
    sa.Index("ix_artifacts_phase", "tenant", "phase_id", "created_at", "id"),
    sa.Index("ix_artifacts_session", "tenant", "session_id", "created_at", "id"),
    sa.Index("ix_artifacts_type", "tenant", "artifact_type", "created_at", "id"),
    sa.Index("ix_artifacts_content_type", "tenant", "content_type", "created_at", "id"),
    sa.Index("ix_artifacts_primary", "tenant", "is_primary_deliverable", "created_at", "id"),
    sa.Index("ix_artifacts_content_hash", "content_hash"),
    sa.Index(
        "ux_artifacts_one_primary",
        "tenant",
        "workflow_id",
        sa.text("coalesce(phase_id, '')"),
        unique=True,
        sqlite_where=sa.text("is_primary_deliverable AND deleted_at IS NULL"),
        postgresql_where=sa.text("is_primary_deliverable AND deleted_at IS NULL"),
    ),
    sa.Index(
        "ux_artifacts_source",
        "tenant",
        "source",
        "source_ref",
        unique=True,
        sqlite_where=sa.text("source_ref IS NOT NULL AND deleted_at IS NULL"),
        postgresql_where=sa.text("source_ref IS NOT NULL AND deleted_at IS NULL"),
    ),
)

# Every content an artifact has had: the create, each upload, each content replacement makes
# a version (1, 2, ...), never changed afterwards. The artifact's row repeats its current one.
# superseded_at is when a newer version became current (NULL for the current one): retention
# (ARTIFACTS_VERSION_RETENTION) counts from it.
artifact_versions = sa.Table(
    "artifact_versions",
    metadata,
    sa.Column("artifact_id", ID, sa.ForeignKey("artifacts.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("content_hash", sa.String(64), sa.ForeignKey("blobs.digest"), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("filename", sa.Text),
    sa.Column("is_text", sa.Boolean, nullable=False),
    sa.Column("created_by", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("superseded_at", sa.BigInteger),
    sa.Index("ix_artifact_versions_content_hash", "content_hash"),
    sa.Index("ix_artifact_versions_superseded", "superseded_at"),
)

lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("child_id", ID, sa.ForeignKey("artifacts.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("parent_id", ID, sa.ForeignKey("artifacts.id"), nullable=False),
    sa.Column("parent_digest", sa.String(64), sa.ForeignKey("blobs.digest"), nullable=False),
    # the child's created_at, so a parent's children are listed by walking an index (0006)
    sa.Column("child_created_at", sa.BigInteger, nullable=False),
    # the parent's version at link time (NULL: an edge made before versions existed, whose
    # parent had been re-uploaded since; it pins parent_digest only)
    sa.Column("parent_version", sa.Integer),
    sa.Index("ix_lineage_parent_order", "parent_id", "child_created_at", "child_id"),
    sa.Index("ix_lineage_parent_digest", "parent_digest"),
)

# The change feed: one row per change, written in the transaction of the change it describes.
# seq is the resumable cursor (assigned in commit order: see storage/events.py).
events = sa.Table(
    "events",
    metadata,
    sa.Column(
        "seq",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("artifact_id", ID, nullable=False),
    sa.Column("workflow_id", sa.Text, nullable=False),
    sa.Column("phase_id", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    tenant_column(),
    sa.Index("ix_events_workflow", "tenant", "workflow_id", "seq"),
    sa.Index("ix_events_tenant", "tenant", "seq"),
)

# Import jobs (e.g. from CrowNest): state kept here so an interrupted job can be resumed.
imports = sa.Table(
    "imports",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("finished_at", sa.BigInteger),
    tenant_column(),
)

import_items = sa.Table(
    "import_items",
    metadata,
    sa.Column("import_id", ID, sa.ForeignKey("imports.id"), primary_key=True),
    sa.Column("upstream_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("artifact_id", ID),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

# Idempotency-Key records (storage/idempotency.py): a key is claimed with a lease before its
# request runs, and completed with the stored response in the transaction of the write itself.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(255), primary_key=True),  # the caller (tenant or key)
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("token", sa.String(32), nullable=False),  # the current holder of the lease
    sa.Column("status", sa.String(10), nullable=False),  # running | completed
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("response_status", sa.Integer),
    sa.Column("response_headers", sa.JSON),
    sa.Column("response_body", sa.LargeBinary),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("lease_expires_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_idempotency_keys_expires", "expires_at"),
)

# API keys: only a sha256 of the key (keys are 256-bit random, so a fast hash is enough) and a
# short prefix to recognise it by are stored; the key itself is shown once, at creation.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant", sa.String(255), nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("revoked_at", sa.BigInteger),
    sa.Index("ux_api_keys_secret_hash", "secret_hash", unique=True),
)
