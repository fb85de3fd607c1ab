"""The change feed: events written in the transaction of each change.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "events",
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
    )
    op.create_index("ix_events_workflow", "events", ["workflow_id", "seq"])


def downgrade() -> None:
    op.drop_table("events")
