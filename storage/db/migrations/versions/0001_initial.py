"""Initial schema: blobs, artifacts, lineage.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Artifact ids compare bytewise on every backend ("C" collation on PostgreSQL), so the range
# scan behind id-prefix lookups is exact whatever the database's locale.
ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")
LIVE_PRIMARY = sa.text("is_primary_deliverable AND deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "artifacts",
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
    )
    op.create_index("ix_artifacts_order", "artifacts", ["created_at", "id"])
    op.create_index("ix_artifacts_workflow", "artifacts", ["workflow_id", "created_at", "id"])
    op.create_index(
        "ix_artifacts_workflow_phase", "artifacts", ["workflow_id", "phase_id", "created_at", "id"]
    )
    op.create_index("ix_artifacts_phase", "artifacts", ["phase_id", "created_at", "id"])
    op.create_index("ix_artifacts_session", "artifacts", ["session_id", "created_at", "id"])
    op.create_index("ix_artifacts_type", "artifacts", ["artifact_type", "created_at", "id"])
    op.create_index("ix_artifacts_content_hash", "artifacts", ["content_hash"])
    op.create_index(
        "ux_artifacts_one_primary",
        "artifacts",
        ["workflow_id", sa.text("coalesce(phase_id, '')")],
        unique=True,
        sqlite_where=LIVE_PRIMARY,
        postgresql_where=LIVE_PRIMARY,
    )
    op.create_table(
        "lineage",
        sa.Column("child_id", ID, sa.ForeignKey("artifacts.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("parent_id", ID, sa.ForeignKey("artifacts.id"), nullable=False),
        sa.Column("parent_digest", sa.String(64), sa.ForeignKey("blobs.digest"), nullable=False),
    )
    op.create_index("ix_lineage_parent", "lineage", ["parent_id"])
    op.create_index("ix_lineage_parent_digest", "lineage", ["parent_digest"])


def downgrade() -> None:
    op.drop_table("lineage")
    op.drop_table("artifacts")
    op.drop_table("blobs")
