"""drift views: drift_bins (each day's served values against each training reference bin),
feature_drift and prediction_drift (their population stability index per model version and day).

Views are not in the tables' metadata: Alembic's autogenerate (and `alembic check`) compares
tables only, so these live here alone, created and dropped as SQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every bin of a reference (reference_bins) against the served rows of each day (UTC) that had
# any for that model version: the share of them in the bin (`actual`) beside the share of
# training rows (`expected`), and the bin's term of the population stability index.
DRIFT_BINS = """
CREATE VIEW drift_bins AS
WITH distributions AS (
    -- each reference: a feature's, or the answers' (subject 'prediction', name ''); its bins are
    -- categories, "anything else" being the one without, or ranges lower <= v < upper that
    -- cover every number (a null bound is unbounded)
    SELECT model_name, model_version, subject, name,
           bool_or(category IS NOT NULL) AS categorical,
           min(bin) FILTER (WHERE category IS NULL) AS anything_else,
           array_agg(lower ORDER BY lower) FILTER (WHERE lower IS NOT NULL) AS lower_bounds,
           array_agg(bin ORDER BY lower NULLS FIRST) AS ranges
    FROM reference_bins
    GROUP BY model_name, model_version, subject, name
),
served AS (
    -- each served value that has a reference, on the UTC day it was served
    SELECT p.model_name, p.model_version, d.subject, d.name,
           (p.served_at AT TIME ZONE 'UTC')::date AS day,
           CASE d.subject WHEN 'feature' THEN p.features -> d.name ELSE p.prediction END AS value,
           d.categorical, d.anything_else, d.lower_bounds, d.ranges
    FROM predictions p
    JOIN distributions d USING (model_name, model_version)
),
placed AS (
    -- its bin: a category's own (equal as JSON: "eu", true, 2) or else "anything else"; a
    -- number's range (width_bucket counts the lower bounds <= it); a value of a numeric
    -- feature that is not a JSON number has none and is not counted
    SELECT s.model_name, s.model_version, s.subject, s.name, s.day,
           CASE WHEN s.categorical THEN coalesce(seen.bin, s.anything_else)
                WHEN jsonb_typeof(s.value) = 'number' THEN s.ranges[
                    width_bucket((s.value #>> '{}')::double precision, s.lower_bounds) + 1]
           END AS bin
    FROM served s
    LEFT JOIN reference_bins seen
      ON s.categorical
     AND (seen.model_name, seen.model_version, seen.subject, seen.name)
         = (s.model_name, s.model_version, s.subject, s.name)
     AND seen.category = s.value
),
counted AS (
    SELECT model_name, model_version, subject, name, day, bin, count(*) AS observed
    FROM placed
    WHERE bin IS NOT NULL
    GROUP BY model_name, model_version, subject, name, day, bin
),
shares AS (
    -- every bin of the reference, empty ones included, for each day with served values
    SELECT model_name, model_version, subject, name, c.day, b.bin, b.lower, b.upper,
           b.category, b.expected,
           coalesce(sum(c.observed) FILTER (WHERE c.bin = b.bin), 0)::bigint AS observed,
           sum(c.observed)::bigint AS served
    FROM counted c
    JOIN reference_bins b USING (model_name, model_version, subject, name)
    GROUP BY model_name, model_version, subject, name, c.day, b.bin, b.lower, b.upper,
             b.category, b.expected
)
-- PSI = sum over bins of (a - e) * ln(a / e), a the share of the day's served values in the bin,
-- e the share of training rows, where any share below 1e-4 is taken as 1e-4: an empty bin
-- would otherwise make it infinite
SELECT model_name, model_version, subject, name, day, bin, lower, upper, category, expected,
       observed, served, observed::double precision / served AS actual,
       (greatest(observed::double precision / served, 1e-4) - greatest(expected, 1e-4))
       * ln(greatest(observed::double precision / served, 1e-4) / greatest(expected, 1e-4))
           AS psi_term
FROM shares
"""

FEATURE_DRIFT = """
CREATE VIEW feature_drift AS
SELECT model_name, model_version, name AS feature, day, served, sum(psi_term) AS psi
FROM drift_bins
WHERE subject = 'feature'
GROUP BY model_name, model_version, name, day, served
"""

PREDICTION_DRIFT = """
CREATE VIEW prediction_drift AS
SELECT model_name, model_version, day, served, sum(psi_term) AS psi
FROM drift_bins
WHERE subject = 'prediction'
GROUP BY model_name, model_version, day, served
"""

COMMENTS = {
    "drift_bins": "Per model version, subject (feature or prediction), name, UTC day and "
    "training reference bin: the share of that day's served values in the bin (actual) and of "
    "training rows (expected), and the bin's PSI term (shares below 1e-4 taken as 1e-4).",
    "feature_drift": "Population stability index of each feature's served values per model "
    "version and UTC day against the training reference; served = rows counted.",
    "prediction_drift": "Population stability index of the answers (labels or values) per model "
    "version and UTC day against the training reference; served = rows counted.",
}


def upgrade() -> None:
    for view in (DRIFT_BINS, FEATURE_DRIFT, PREDICTION_DRIFT):
        op.execute(view)
    for name, comment in COMMENTS.items():
        quoted = comment.replace("'", "''")
        op.execute(f"COMMENT ON VIEW {name} IS '{quoted}'")


def downgrade() -> None:
    op.execute("DROP VIEW prediction_drift")
    op.execute("DROP VIEW feature_drift")
    op.execute("DROP VIEW drift_bins")
