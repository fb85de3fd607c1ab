"""Immutable versions: every content an artifact has had is a row of artifact_versions, the
artifact carries its current version's number, and a lineage edge names the parent's version.

Each existing artifact (soft-deleted ones included) becomes version 1 with its current content;
its created_at is the artifact's updated_at, the last time it changed, at or after its content
landed (when the content landed was not recorded before). An edge whose parent_digest is its
parent's current content pins version 1; an edge to content replaced before this migration keeps
parent_version NULL (it still pins the bytes by parent_digest).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "artifact_versions",
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
    )
    op.create_index("ix_artifact_versions_content_hash", "artifact_versions", ["content_hash"])
    op.create_index("ix_artifact_versions_superseded", "artifact_versions", ["superseded_at"])
    op.add_column(
        "artifacts",
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
    )
    op.add_column("lineage", sa.Column("parent_version", sa.Integer, nullable=True))
    op.execute(
        "INSERT INTO artifact_versions (artifact_id, version, content_hash, size_bytes, "
        "content_type, filename, is_text, created_by, created_at, superseded_at) "
        "SELECT id, 1, content_hash, size_bytes, content_type, filename, is_text, created_by, "
        "updated_at, NULL FROM artifacts"
    )
    op.execute(
        "UPDATE lineage SET parent_version = 1 WHERE parent_digest = "
        "(SELECT content_hash FROM artifacts WHERE artifacts.id = lineage.parent_id)"
    )


def downgrade() -> None:
    # SQLite drops columns by copying the table; reflecting it reflects artifacts too, whose
    # expression index SQLAlchemy cannot reflect (and the copy does not need): quiet that.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        with op.batch_alter_table("lineage") as batch:
            batch.drop_column("parent_version")
    op.drop_column("artifacts", "version")
    op.drop_index("ix_artifact_versions_superseded", "artifact_versions")
    op.drop_index("ix_artifact_versions_content_hash", "artifact_versions")
    op.drop_table("artifact_versions")
