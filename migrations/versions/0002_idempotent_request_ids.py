"""idempotent request ids: each stored row keeps its request's fingerprint, and a record whose
request id is stored for another request goes to ledger_conflicts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # nullable, no default: adding it rewrites nothing, whatever the table's size
    op.add_column("predictions", sa.Column("request_hash", sa.Text(), nullable=True))
    op.create_table(
        "ledger_conflicts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("features", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("prediction", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("probabilities", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("served_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("stored_request_hash", sa.Text(), nullable=True),
        sa.Column(
            "detected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_conflicts")),
        sa.UniqueConstraint(
            "request_id",
            "row_index",
            "request_hash",
            name=op.f("uq_ledger_conflicts_request_id_row_index_request_hash"),
        ),
    )
    op.create_index(
        op.f("ix_ledger_conflicts_detected_at"), "ledger_conflicts", ["detected_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_ledger_conflicts_detected_at"), table_name="ledger_conflicts")
    op.drop_table("ledger_conflicts")
    op.drop_column("predictions", "request_hash")
