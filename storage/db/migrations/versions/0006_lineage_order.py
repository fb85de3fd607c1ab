"""Lineage rows carry their child's created_at, so that listing the children of one parent walks
an index in list order ((parent_id, child_created_at, child_id)) instead of the whole time index
of artifacts filtered through the parent's child list: at a million artifacts a derived_from page
read ~5,000 index entries and rows for 50 children.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("lineage", sa.Column("child_created_at", sa.BigInteger, nullable=True))
    op.execute(
        "UPDATE lineage SET child_created_at = "
        "(SELECT created_at FROM artifacts WHERE artifacts.id = lineage.child_id)"
    )
    # SQLite: a copy of lineage (it has no expression index to lose); PostgreSQL: SET NOT NULL.
    # Reflecting lineage's foreign keys reflects artifacts too, whose expression index SQLAlchemy
    # cannot reflect (and the copy does not need): quiet that warning.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        with op.batch_alter_table("lineage") as batch:
            batch.alter_column("child_created_at", existing_type=sa.BigInteger, nullable=False)
    op.create_index(
        "ix_lineage_parent_order", "lineage", ["parent_id", "child_created_at", "child_id"]
    )
    op.drop_index("ix_lineage_parent", "lineage")  # the new index leads with parent_id too


def downgrade() -> None:
    op.create_index("ix_lineage_parent", "lineage", ["parent_id"])
    op.drop_index("ix_lineage_parent_order", "lineage")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        with op.batch_alter_table("lineage") as batch:
            batch.drop_column("child_created_at")
