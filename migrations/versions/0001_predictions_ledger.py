"""predictions ledger: one row per served row, and a dead-letter table for entries that cannot be
stored.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 03:49:45.418394
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("delivery_count", sa.Integer(), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_dead_letters")),
        sa.UniqueConstraint("stream_id", name=op.f("uq_ledger_dead_letters_stream_id")),
    )
    op.create_table(
        "predictions",
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
        sa.Column(
            "stored_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("request_id", "row_index", name=op.f("pk_predictions")),
    )
    op.create_index(
        op.f("ix_predictions_model_name_model_version_served_at"),
        "predictions",
        ["model_name", "model_version", "served_at"],
        unique=False,
    )
    op.create_index(op.f("ix_predictions_served_at"), "predictions", ["served_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_predictions_served_at"), table_name="predictions")
    op.drop_index(
        op.f("ix_predictions_model_name_model_version_served_at"), table_name="predictions"
    )
    op.drop_table("predictions")
    op.drop_table("ledger_dead_letters")
