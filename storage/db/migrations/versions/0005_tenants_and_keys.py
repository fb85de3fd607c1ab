"""Tenants and API keys: every artifact, event and import job belongs to a tenant (existing rows
to "default", the open-mode tenant); indexes lead with it; API keys store only a hash.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.String(36).with_variant(sa.String(36, collation="C"), "postgresql")
LIVE_PRIMARY = sa.text("is_primary_deliverable AND deleted_at IS NULL")
LIVE_SOURCED = sa.text("source_ref IS NOT NULL AND deleted_at IS NULL")
# (name, columns before, columns after) of the artifacts indexes that gain a leading tenant
ARTIFACT_INDEXES = [
    ("ix_artifacts_order", ["created_at", "id"]),
    ("ix_artifacts_workflow", ["workflow_id", "created_at", "id"]),
    ("ix_artifacts_workflow_phase", ["workflow_id", "phase_id", "created_at", "id"]),
    ("ix_artifacts_phase", ["phase_id", "created_at", "id"]),
    ("ix_artifacts_session", ["session_id", "created_at", "id"]),
    ("ix_artifacts_type", ["artifact_type", "created_at", "id"]),
]


def _tenant() -> sa.Column:
    return sa.Column("tenant", sa.String(255), nullable=False, server_default=sa.text("'default'"))


def _primary_and_source(with_tenant: bool) -> None:
    lead = ["tenant"] if with_tenant else []
    op.create_index(
        "ux_artifacts_one_primary",
        "artifacts",
        [*lead, "workflow_id", sa.text("coalesce(phase_id, '')")],
        unique=True,
        sqlite_where=LIVE_PRIMARY,
        postgresql_where=LIVE_PRIMARY,
    )
    op.create_index(
        "ux_artifacts_source",
        "artifacts",
        [*lead, "source", "source_ref"],
        unique=True,
        sqlite_where=LIVE_SOURCED,
        postgresql_where=LIVE_SOURCED,
    )


def upgrade() -> None:
    # Plain ALTER TABLE (no batch copy on SQLite, which would lose the expression index).
    for table in ("artifacts", "events", "imports"):
        op.add_column(table, _tenant())
    for name, columns in ARTIFACT_INDEXES:
        op.drop_index(name, "artifacts")
        op.create_index(name, "artifacts", ["tenant", *columns])
    op.drop_index("ux_artifacts_one_primary", "artifacts")
    op.drop_index("ux_artifacts_source", "artifacts")
    _primary_and_source(with_tenant=True)
    op.drop_index("ix_events_workflow", "events")
    op.create_index("ix_events_workflow", "events", ["tenant", "workflow_id", "seq"])
    op.create_index("ix_events_tenant", "events", ["tenant", "seq"])
    op.create_table(
        "api_keys",
        sa.Column("id", ID, primary_key=True),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ux_api_keys_secret_hash", "api_keys", ["secret_hash"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_api_keys_secret_hash", "api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_events_tenant", "events")
    op.drop_index("ix_events_workflow", "events")
    op.create_index("ix_events_workflow", "events", ["workflow_id", "seq"])
    op.drop_index("ux_artifacts_source", "artifacts")
    op.drop_index("ux_artifacts_one_primary", "artifacts")
    _primary_and_source(with_tenant=False)
    for name, columns in ARTIFACT_INDEXES:
        op.drop_index(name, "artifacts")
        op.create_index(name, "artifacts", columns)
    for table in ("imports", "events", "artifacts"):
        op.drop_column(table, "tenant")
