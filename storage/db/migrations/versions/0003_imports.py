"""Imports: where an artifact came from upstream (unique per live artifact), and import jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")
LIVE_SOURCED = sa.text("source_ref IS NOT NULL AND deleted_at IS NULL")


def upgrade() -> None:
    # Plain ALTER TABLE (no batch "move and copy" on SQLite, which would lose the expression
    # index ux_artifacts_one_primary that SQLAlchemy cannot reflect).
    op.add_column("artifacts", sa.Column("source", sa.Text))
    op.add_column("artifacts", sa.Column("source_ref", sa.Text))
    op.create_index(
        "ux_artifacts_source",
        "artifacts",
        ["source", "source_ref"],
        unique=True,
        sqlite_where=LIVE_SOURCED,
        postgresql_where=LIVE_SOURCED,
    )
    op.create_table(
        "imports",
        sa.Column("id", ID, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger),
    )
    op.create_table(
        "import_items",
        sa.Column("import_id", ID, sa.ForeignKey("imports.id"), primary_key=True),
        sa.Column("upstream_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("artifact_id", ID),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("import_items")
    op.drop_table("imports")
    op.drop_index("ux_artifacts_source", "artifacts")
    op.drop_column("artifacts", "source_ref")  # native DROP COLUMN: SQLite >= 3.35
    op.drop_column("artifacts", "source")
