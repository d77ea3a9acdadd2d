"""feedback quality: feedback_duplicates (a receipt for feedback that repeated the value in
effect, so that every accepted row is accounted for once), and the views latest_feedback,
prediction_outcomes, model_quality_daily and confusion_matrix.

Views are not in the tables' metadata (Alembic's autogenerate and `alembic check` compare tables
only), so they live here alone, created and dropped as SQL.

A model version's task comes from `model_versions`; a version without a row there (served before
the API recorded them) is taken for a classifier when it answered probabilities or a label that
is not a number, and for a regressor otherwise (so a classifier without predict_proba whose
classes are numbers counts as a regressor until its row exists).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The newest value of each labelled row (by received_at, then feedback_id, the worker's order),
# when it was received, when the row was first labelled, how many values it has had
# (1 + corrections) and how many times feedback for it was accepted (duplicates included).
LATEST_FEEDBACK = """
CREATE VIEW latest_feedback AS
SELECT DISTINCT ON (f.request_id, f.row_index)
       f.request_id, f.row_index, f.actual, f.received_at, f.feedback_id, f.source,
       min(f.received_at) OVER w AS first_received_at,
       count(*) OVER w AS revisions,
       count(*) OVER w + coalesce(d.duplicates, 0) AS times_sent
FROM feedback f
LEFT JOIN (
    SELECT request_id, row_index, count(*) AS duplicates
    FROM feedback_duplicates
    GROUP BY request_id, row_index
) d USING (request_id, row_index)
WINDOW w AS (PARTITION BY f.request_id, f.row_index)
ORDER BY f.request_id, f.row_index, f.received_at DESC, f.feedback_id DESC
"""

# Every stored prediction with its latest actual (null while unlabelled). `correct` for
# classifiers (the label equals the actual, as JSON: 1 = 1.0, "1" <> 1), `error` for regressors
# (prediction - actual).
PREDICTION_OUTCOMES = """
CREATE VIEW prediction_outcomes AS
SELECT p.request_id, p.row_index, p.model_name, p.model_version, p.served_at, k.task,
       p.prediction, f.actual, f.received_at, f.first_received_at, f.revisions,
       CASE WHEN k.task = 'classification' AND f.actual IS NOT NULL
            THEN p.prediction = f.actual
       END AS correct,
       CASE WHEN k.task = 'regression' AND jsonb_typeof(f.actual) = 'number'
                 AND jsonb_typeof(p.prediction) = 'number'
            THEN (p.prediction #>> '{}')::double precision
                 - (f.actual #>> '{}')::double precision
       END AS error
FROM predictions p
LEFT JOIN model_versions v USING (model_name, model_version)
CROSS JOIN LATERAL (
    SELECT coalesce(
        v.task,
        CASE WHEN jsonb_typeof(p.probabilities) = 'object'
                  OR jsonb_typeof(p.prediction) <> 'number'
             THEN 'classification' ELSE 'regression' END
    ) AS task
) k
LEFT JOIN latest_feedback f USING (request_id, row_index)
"""

# Per model version and UTC day of serving. label_delay_seconds: the median time from a row's
# answer to its first label, over the labelled rows.
MODEL_QUALITY_DAILY = """
CREATE VIEW model_quality_daily AS
SELECT model_name, model_version, (served_at AT TIME ZONE 'UTC')::date AS day,
       count(*) AS predictions,
       count(actual) AS labelled,
       avg(correct::int)::double precision AS accuracy,
       avg(abs(error)) AS mae,
       sqrt(avg(error * error)) AS rmse,
       count(actual)::double precision / count(*) AS label_coverage,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM first_received_at - served_at)::double precision
       ) AS label_delay_seconds
FROM prediction_outcomes
GROUP BY model_name, model_version, (served_at AT TIME ZONE 'UTC')::date
"""

CONFUSION_MATRIX = """
CREATE VIEW confusion_matrix AS
SELECT model_name, model_version, actual, prediction AS predicted, count(*) AS rows
FROM prediction_outcomes
WHERE task = 'classification' AND actual IS NOT NULL
GROUP BY model_name, model_version, actual, prediction
"""

COMMENTS = {
    "latest_feedback": "The newest actual of each labelled row (by received_at), when the row "
    "was first labelled, its revisions (1 + corrections) and times_sent (duplicates included).",
    "prediction_outcomes": "Every stored prediction with its latest actual (null while "
    "unlabelled): correct for classifiers, error = prediction - actual for regressors.",
    "model_quality_daily": "Per model version and UTC day served: predictions, labelled, "
    "accuracy (classifiers), mae and rmse (regressors), label_coverage = labelled / predictions "
    "and label_delay_seconds = the median time from answer to first label.",
    "confusion_matrix": "Per classifier version: labelled rows by actual and predicted label.",
}


def upgrade() -> None:
    op.create_table(
        "feedback_duplicates",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("feedback_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("actual", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("duplicate_of", sa.Text(), nullable=False),
        sa.Column(
            "detected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_duplicates")),
        sa.UniqueConstraint("feedback_id", name=op.f("uq_feedback_duplicates_feedback_id")),
    )
    op.create_index(
        op.f("ix_feedback_duplicates_received_at"),
        "feedback_duplicates",
        ["received_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_feedback_duplicates_request_id_row_index"),
        "feedback_duplicates",
        ["request_id", "row_index"],
        unique=False,
    )
    for view in (LATEST_FEEDBACK, PREDICTION_OUTCOMES, MODEL_QUALITY_DAILY, CONFUSION_MATRIX):
        op.execute(view)
    for name, comment in COMMENTS.items():
        op.execute(f"COMMENT ON VIEW {name} IS '{comment}'")


def downgrade() -> None:
    op.execute("DROP VIEW confusion_matrix")
    op.execute("DROP VIEW model_quality_daily")
    op.execute("DROP VIEW prediction_outcomes")
    op.execute("DROP VIEW latest_feedback")
    op.drop_index(
        op.f("ix_feedback_duplicates_request_id_row_index"), table_name="feedback_duplicates"
    )
    op.drop_index(op.f("ix_feedback_duplicates_received_at"), table_name="feedback_duplicates")
    op.drop_table("feedback_duplicates")
