"""What the dashboard shows for one model version, computed with SQL over the ledger.

Blocking (the route runs it in a worker thread). Every query is bounded: by the time window on
`served_at` (indexed with the model's name and version), by days on the quality and drift views,
by a count of rows on the replays (indexed with the model's name and finished_at), and by a
statement timeout. Per-interval figures come as lists aligned with `buckets` (the start of each
interval, in Unix seconds), which is what the page's charts take as they are.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from berth_api.errors import LedgerUnavailable

# The window the page may ask for, in minutes: five minutes to a week.
MIN_MINUTES = 5
MAX_MINUTES = 7 * 24 * 60
# Intervals per chart at most: a week is drawn in 84-minute steps, an hour in minutes.
MAX_POINTS = 120
# Feedback and drift are daily views: the page shows this many days of them.
DAYS = 14
TOP_FEATURES = 5
# Replays shown: the newest rows of `replays` (one per replay and served version), enough for
# the last few candidates without crowding the chart.
REPLAYS = 10
QUANTILES = (0.1, 0.5, 0.9)
STATEMENT_TIMEOUT_MS = 5000

Task = Literal["classification", "regression"]


@dataclass(frozen=True, slots=True)
class Window:
    """The last `minutes` up to `until`, cut into intervals of `step_seconds` that start at
    multiples of the step since the Unix epoch (as SQL's date_bin with that origin cuts them)."""

    minutes: int
    until: datetime

    @classmethod
    def ending_now(cls, minutes: int) -> Window:
        return cls(minutes, datetime.now(UTC))

    @property
    def since(self) -> datetime:
        return self.until - timedelta(minutes=self.minutes)

    @property
    def step_seconds(self) -> int:
        return 60 * max(1, math.ceil(self.minutes / MAX_POINTS))

    @property
    def buckets(self) -> list[int]:
        step = self.step_seconds
        first = int(self.since.timestamp()) // step * step
        return list(range(first, int(self.until.timestamp()) + 1, step))

    @property
    def days(self) -> list[date]:
        """The days of the quality and drift views to show (UTC, as the views count them)."""
        today = self.until.astimezone(UTC).date()
        return [today - timedelta(days=n) for n in range(DAYS - 1, -1, -1)]


class ModelChoice(BaseModel):
    name: str
    version: str


class WindowFigures(BaseModel):
    minutes: int
    step_seconds: int
    since: datetime
    until: datetime


class Traffic(BaseModel):
    total: int = Field(description="rows served in the window")
    per_minute: list[float] = Field(description="rows served per minute, per interval")


class MixSeries(BaseModel):
    """A class's share of the rows (0 to 1), or a quantile of the values a regressor answered."""

    name: str
    values: list[float | None]
    window: float | None = Field(description="over the whole window")
    training: float | None = Field(description="in the training reference, when there is one")


class Mix(BaseModel):
    kind: Literal["classes", "quantiles"]
    series: list[MixSeries]


class Latency(BaseModel):
    """Per request (its first row), cache hits included."""

    p50_ms: float | None
    p99_ms: float | None
    p50: list[float | None]
    p99: list[float | None]


class Cache(BaseModel):
    hit_rate: float | None
    series: list[float | None]


class BacklogFigures(BaseModel):
    """berth_common.backlog.Backlog's figures (read from one with model_validate)."""

    model_config = ConfigDict(from_attributes=True)

    waiting: int
    unread: int
    unread_capped: bool
    pending: int
    oldest_waiting_age_seconds: float | None


class Ledger(BaseModel):
    lag_p99_seconds: float | None = Field(description="served → stored, p99 over the window")
    lag_p99: list[float | None]
    backlog: BacklogFigures | None = Field(
        description="stream entries not yet stored, now; null when Redis cannot tell"
    )


class Quality(BaseModel):
    """From the view model_quality_daily (feedback joined to predictions), per day."""

    available: bool = Field(description="false until the view exists (migration 0005)")
    days: list[date] = Field(default=[], description="the last DAYS days, UTC, today last")
    latest: date | None = Field(default=None, description="the last day with feedback")
    predictions: list[int] = []
    labelled: list[int] = []
    accuracy: list[float | None] = []
    mae: list[float | None] = []
    rmse: list[float | None] = []
    label_coverage: list[float | None] = []


class FeatureDrift(BaseModel):
    feature: str
    psi: float | None = Field(description="on `Drift.latest`")
    values: list[float | None] = Field(description="per day of `Drift.days`")


class Drift(BaseModel):
    """From the views feature_drift and prediction_drift (PSI against the training reference)."""

    available: bool = Field(description="false until the views exist (migration 0004)")
    days: list[date] = Field(default=[], description="the last DAYS days, UTC, today last")
    latest: date | None = Field(default=None, description="the last day with figures")
    features: list[FeatureDrift] = Field(
        default=[], description="the most drifting on the latest day first"
    )
    prediction: list[float | None] = []


class ReplayRun(BaseModel):
    """A row of `replays`: the candidate scored on the stored rows one version served."""

    replay_id: str
    finished_at: datetime
    candidate_version: str
    served_version: str
    since: datetime | None = Field(description="the served_at replayed from (SINCE); null: all")
    until: datetime | None = Field(description="and up to, excluded (UNTIL); null: all")
    rows: int = Field(description="rows scored")
    agreed: int = Field(description="rows where the candidate answers what was served")
    labelled: int = Field(description="rows with feedback")
    agreement: float | None = Field(description="agreed / rows")
    served_accuracy: float | None = Field(description="classifiers, on the labelled rows")
    candidate_accuracy: float | None
    served_mae: float | None = Field(description="regressors, on the labelled rows")
    candidate_mae: float | None
    served_rmse: float | None
    candidate_rmse: float | None


class Replays(BaseModel):
    """From the table replays (`make replay`), for the model's name whatever version it serves:
    candidates are compared with every version that served the traffic."""

    available: bool = Field(description="false until the table exists (migration 0003)")
    runs: list[ReplayRun] = Field(default=[], description="the newest REPLAYS rows, newest first")


class DashboardData(BaseModel):
    generated_at: datetime
    window: WindowFigures
    model: ModelChoice
    task: Task
    models: list[ModelChoice] = Field(description="every model version served")
    buckets: list[int] = Field(description="start of each interval, Unix seconds")
    traffic: Traffic
    mix: Mix
    latency: Latency
    cache: Cache
    ledger: Ledger
    quality: Quality
    drift: Drift
    replays: Replays


# Rows of the model version in the window, with their interval.
_IN_WINDOW = """
WITH rows AS (
    SELECT row_index, prediction, cached, latency_ms, served_at, stored_at,
           extract(epoch FROM date_bin(make_interval(secs => :step), served_at,
                                       TIMESTAMPTZ '1970-01-01 00:00:00+00'))::bigint AS bucket
    FROM predictions
    WHERE model_name = :model AND model_version = :version
      AND served_at >= :since AND served_at < :until
)
"""
# Per interval, and (bucket null) over the whole window.
_PER_BUCKET = text(
    _IN_WINDOW
    + """
SELECT bucket, count(*) AS rows, count(*) FILTER (WHERE cached) AS cached,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE row_index = 0)
           AS latency_p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE row_index = 0)
           AS latency_p99,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - served_at))
           AS lag_p99
FROM rows GROUP BY GROUPING SETS ((bucket), ())
"""
)
_CLASSES = text(
    _IN_WINDOW
    + """
SELECT bucket, prediction #>> '{}' AS label, count(*) AS rows FROM rows GROUP BY bucket, label
"""
)
_QUANTILES = text(
    _IN_WINDOW
    + """
SELECT bucket,
       percentile_cont(CAST(:quantiles AS float8[]))
           WITHIN GROUP (ORDER BY (prediction #>> '{}')::float8) AS quantiles
FROM rows WHERE jsonb_typeof(prediction) = 'number' GROUP BY GROUPING SETS ((bucket), ())
"""
)
_REFERENCE = text(
    "SELECT lower, upper, category #>> '{}' AS category, expected FROM reference_bins"
    " WHERE model_name = :model AND model_version = :version AND subject = 'prediction'"
    " ORDER BY bin"
)
_VIEWS = text(
    "SELECT to_regclass('model_quality_daily') IS NOT NULL AS quality,"
    " to_regclass('feature_drift') IS NOT NULL AND to_regclass('prediction_drift') IS NOT NULL"
    " AS drift, to_regclass('replays') IS NOT NULL AS replays"
)
_QUALITY = text(
    "SELECT day, predictions, labelled, accuracy, mae, rmse, label_coverage"
    " FROM model_quality_daily"
    " WHERE model_name = :model AND model_version = :version AND day >= :first_day ORDER BY day"
)
_FEATURE_DRIFT = text(
    "SELECT day, feature, psi FROM feature_drift"
    " WHERE model_name = :model AND model_version = :version AND day >= :first_day"
)
_PREDICTION_DRIFT = text(
    "SELECT day, psi FROM prediction_drift"
    " WHERE model_name = :model AND model_version = :version AND day >= :first_day"
)
_REPLAYS = text(
    "SELECT replay_id, finished_at, candidate_version, served_version, since, until, rows,"
    " agreed, labelled, agreed::float8 / nullif(rows, 0) AS agreement,"
    " served_correct::float8 / nullif(labelled, 0) AS served_accuracy,"
    " candidate_correct::float8 / nullif(labelled, 0) AS candidate_accuracy,"
    " served_mae, candidate_mae, served_rmse, candidate_rmse"
    " FROM replays WHERE model_name = :model"
    " ORDER BY finished_at DESC, replay_id, served_version LIMIT :replays"
)


@dataclass(frozen=True, slots=True)
class Subject:
    """The model version the figures are about, and what the page needs besides SQL."""

    model: ModelChoice
    task: Task
    # a classifier's labels, in the model's order
    classes: Sequence[Any] | None
    # every model version served, for the page's choice
    models: list[ModelChoice]
    backlog: BacklogFigures | None


def ledger_figures(engine: Engine, subject: Subject, window: Window) -> DashboardData:
    """Blocking."""
    model = subject.model
    parameters = {
        "model": model.name,
        "version": model.version,
        "since": window.since,
        "until": window.until,
        "step": window.step_seconds,
        "first_day": window.days[0],
    }
    try:
        with engine.connect() as connection, connection.begin():
            connection.execute(text("SET TRANSACTION READ ONLY"))
            connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            return _figures(connection, parameters, subject, window)
    except OperationalError as exc:
        raise LedgerUnavailable("the ledger database cannot be reached; try again") from exc


def _figures(
    connection: Connection, parameters: dict[str, Any], subject: Subject, window: Window
) -> DashboardData:
    buckets = window.buckets
    per_bucket: dict[int | None, Any] = {
        row.bucket: row for row in connection.execute(_PER_BUCKET, parameters)
    }
    overall = per_bucket.pop(None, None)
    if overall is not None and not overall.rows:  # the grand total comes even for no rows
        overall = None
    rows = [per_bucket[b].rows if b in per_bucket else 0 for b in buckets]

    def series(column: str) -> list[float | None]:
        return [getattr(per_bucket[b], column) if b in per_bucket else None for b in buckets]

    minutes_per_bucket = window.step_seconds / 60
    reference = connection.execute(_REFERENCE, parameters).all()
    if subject.task == "classification":
        mix = _class_mix(connection, parameters, buckets, rows, subject.classes or (), reference)
    else:
        mix = _quantiles(connection, parameters, buckets, reference)
    views = connection.execute(_VIEWS).one()
    return DashboardData(
        generated_at=datetime.now(UTC),
        window=WindowFigures(
            minutes=window.minutes,
            step_seconds=window.step_seconds,
            since=window.since,
            until=window.until,
        ),
        model=subject.model,
        task=subject.task,
        models=subject.models,
        buckets=buckets,
        traffic=Traffic(
            total=overall.rows if overall else 0,
            per_minute=[n / minutes_per_bucket for n in rows],
        ),
        mix=mix,
        latency=Latency(
            p50_ms=overall.latency_p50 if overall else None,
            p99_ms=overall.latency_p99 if overall else None,
            p50=series("latency_p50"),
            p99=series("latency_p99"),
        ),
        cache=Cache(
            hit_rate=overall.cached / overall.rows if overall else None,
            series=[
                per_bucket[b].cached / per_bucket[b].rows if b in per_bucket else None
                for b in buckets
            ],
        ),
        ledger=Ledger(
            lag_p99_seconds=overall.lag_p99 if overall else None,
            lag_p99=series("lag_p99"),
            backlog=subject.backlog,
        ),
        quality=(
            _quality(connection, parameters, window.days)
            if views.quality
            else Quality(available=False)
        ),
        drift=_drift(connection, parameters, window.days)
        if views.drift
        else Drift(available=False),
        replays=Replays(
            available=True,
            runs=[
                ReplayRun.model_validate(row, from_attributes=True)
                for row in connection.execute(_REPLAYS, {**parameters, "replays": REPLAYS})
            ],
        )
        if views.replays
        else Replays(available=False),
    )


def label_text(value: Any) -> str:
    """A label as SQL's `prediction #>> '{}'` writes it: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _class_mix(
    connection: Connection,
    parameters: dict[str, Any],
    buckets: list[int],
    rows: list[int],
    classes: Sequence[Any],
    reference: Sequence[Any],
) -> Mix:
    counts: dict[str, dict[int, int]] = {label_text(c): {} for c in classes}
    for row in connection.execute(_CLASSES, parameters):
        counts.setdefault(row.label, {})[row.bucket] = row.rows
    training: dict[str, float] = defaultdict(float)
    for bin_ in reference:
        if bin_.category is not None:
            training[bin_.category] += bin_.expected
    total = sum(rows)
    return Mix(
        kind="classes",
        series=[
            MixSeries(
                name=label,
                values=[
                    by_bucket.get(b, 0) / n if n else None
                    for b, n in zip(buckets, rows, strict=True)
                ],
                window=sum(by_bucket.values()) / total if total else None,
                training=training.get(label, 0.0) if reference else None,
            )
            for label, by_bucket in counts.items()
        ],
    )


def _quantiles(
    connection: Connection,
    parameters: dict[str, Any],
    buckets: list[int],
    reference: Sequence[Any],
) -> Mix:
    found = {
        row.bucket: row.quantiles
        for row in connection.execute(_QUANTILES, {**parameters, "quantiles": list(QUANTILES)})
    }
    overall = found.get(None)
    return Mix(
        kind="quantiles",
        series=[
            MixSeries(
                name=f"p{round(q * 100)}",
                values=[found[b][i] if b in found else None for b in buckets],
                window=overall[i] if overall else None,
                training=reference_quantile(reference, q),
            )
            for i, q in enumerate(QUANTILES)
        ],
    )


def reference_quantile(bins: Sequence[Any], q: float) -> float | None:
    """The q-quantile of a numeric training reference, interpolated linearly inside its bin (an
    unbounded bin gives its one bound); None without numeric bins."""
    numeric = [b for b in bins if b.category is None and (b.lower, b.upper) != (None, None)]
    total = sum(b.expected for b in numeric)
    if not numeric or total <= 0:
        return None
    below = 0.0
    for b in numeric:
        share = b.expected / total
        if below + share >= q and share > 0:
            if b.lower is None or b.upper is None:
                return float(b.upper if b.lower is None else b.lower)
            return float(b.lower + (b.upper - b.lower) * (q - below) / share)
        below += share
    last = numeric[-1]
    return float(last.lower if last.upper is None else last.upper)


def _day(value: date | datetime) -> date:
    return value.date() if isinstance(value, datetime) else value


def _quality(connection: Connection, parameters: dict[str, Any], days: list[date]) -> Quality:
    found = {_day(row.day): row for row in connection.execute(_QUALITY, parameters)}
    rows = [found.get(day) for day in days]
    labelled = [day for day, row in found.items() if row.labelled]
    return Quality(
        available=True,
        days=days,
        latest=max(labelled, default=None),
        predictions=[r.predictions if r else 0 for r in rows],
        labelled=[r.labelled if r else 0 for r in rows],
        accuracy=[r.accuracy if r else None for r in rows],
        mae=[r.mae if r else None for r in rows],
        rmse=[r.rmse if r else None for r in rows],
        label_coverage=[r.label_coverage if r else None for r in rows],
    )


def _drift(connection: Connection, parameters: dict[str, Any], days: list[date]) -> Drift:
    psi: dict[str, dict[date, float | None]] = defaultdict(dict)
    for row in connection.execute(_FEATURE_DRIFT, parameters):
        psi[row.feature][_day(row.day)] = row.psi
    prediction = {
        _day(row.day): row.psi for row in connection.execute(_PREDICTION_DRIFT, parameters)
    }
    answers = [prediction.get(d) for d in days]
    latest = max((d for by_day in psi.values() for d in by_day), default=None)
    if latest is None:
        return Drift(available=True, days=days, prediction=answers)
    # the highest PSI on the latest day first; features without one that day last
    ranked = sorted(psi, key=lambda f: (psi[f].get(latest) is None, -(psi[f].get(latest) or 0), f))
    return Drift(
        available=True,
        days=days,
        latest=latest,
        features=[
            FeatureDrift(
                feature=feature,
                psi=psi[feature].get(latest),
                values=[psi[feature].get(d) for d in days],
            )
            for feature in ranked[:TOP_FEATURES]
        ],
        prediction=answers,
    )
