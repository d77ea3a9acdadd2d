"""ground truth, training references and replays: feedback (the true outcome of served rows,
with its history), model_versions and reference_bins (what each model answers and its training
distribution, loaded by the API), replays (a candidate version scored on stored traffic).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 04:53:58.498318
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("feedback_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("actual", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "stored_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("source", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("feedback_id", name=op.f("uq_feedback_feedback_id")),
    )
    op.create_index(op.f("ix_feedback_received_at"), "feedback", ["received_at"], unique=False)
    op.create_index(
        op.f("ix_feedback_request_id_row_index_received_at"),
        "feedback",
        ["request_id", "row_index", "received_at"],
        unique=False,
    )
    op.create_table(
        "model_versions",
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("classes", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("features", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("reference_rows", sa.Integer(), nullable=True),
        sa.Column(
            "first_loaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "task IN ('classification', 'regression')", name=op.f("ck_model_versions_task")
        ),
        sa.PrimaryKeyConstraint("model_name", "model_version", name=op.f("pk_model_versions")),
    )
    op.create_table(
        "reference_bins",
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("bin", sa.Integer(), nullable=False),
        sa.Column("lower", sa.Double(), nullable=True),
        sa.Column("upper", sa.Double(), nullable=True),
        sa.Column("category", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("expected", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "subject IN ('feature', 'prediction')", name=op.f("ck_reference_bins_subject")
        ),
        sa.PrimaryKeyConstraint(
            "model_name", "model_version", "subject", "name", "bin", name=op.f("pk_reference_bins")
        ),
    )
    op.create_table(
        "replays",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("replay_id", sa.Text(), nullable=False),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("candidate_version", sa.Text(), nullable=False),
        sa.Column("served_version", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("agreed", sa.BigInteger(), nullable=False),
        sa.Column("labelled", sa.BigInteger(), nullable=False),
        sa.Column("served_correct", sa.BigInteger(), nullable=True),
        sa.Column("candidate_correct", sa.BigInteger(), nullable=True),
        sa.Column("served_mae", sa.Double(), nullable=True),
        sa.Column("candidate_mae", sa.Double(), nullable=True),
        sa.Column("served_rmse", sa.Double(), nullable=True),
        sa.Column("candidate_rmse", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replays")),
        sa.UniqueConstraint(
            "replay_id", "served_version", name=op.f("uq_replays_replay_id_served_version")
        ),
    )
    op.create_index(
        op.f("ix_replays_model_name_finished_at"),
        "replays",
        ["model_name", "finished_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_replays_model_name_finished_at"), table_name="replays")
    op.drop_table("replays")
    op.drop_table("reference_bins")
    op.drop_table("model_versions")
    op.drop_index(op.f("ix_feedback_request_id_row_index_received_at"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_received_at"), table_name="feedback")
    op.drop_table("feedback")
