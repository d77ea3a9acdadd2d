"""`python -m berth_api.ledger.replay --name N --version V [--since ISO] [--until ISO] [--json]`:
how would candidate version V have answered the traffic model N has served?

It reads the features stored in `predictions` for the model (every version that served them, the
candidate included), scores them with the candidate bundle, and reports, per served version, how
often the candidate answers what was served and how both do on the rows that have feedback (the
newest `received_at` per row is its actual). Nothing is served, cached or appended to the ledger:
the only write is one `replays` row per served version, in one transaction at the end.

- The candidate is loaded as the API loads it: the same trust policy (TRUSTED_TYPES, ALLOW_PICKLE,
  PICKLE_SHA256), and its verified ONNX graph when it has one and COMPILED_MODELS allows.
- Each stored row goes through the API's own row check against the candidate's features. A row
  the candidate cannot take (a feature it lacks or misses, a value of another type) or whose
  values its model refuses is skipped, counted with the reason; it is in no other figure.
- `rows` counts the rows scored; the skipped ones are reported (stdout, --json) but not stored,
  since `replays` has no column for them.
- Classifiers agree when the labels are equal as JSON values (1 = 1.0, but "1" != 1 and
  true != 1, as the feedback views compare them); a row is labelled when it has an actual.
  Regressors agree when the values are equal within the tolerance packaging allows between a
  compiled graph and scikit-learn, |candidate - served| <= 1e-5 * max(1, |served|), so that the
  same model served by either engine agrees; a row is labelled when its actual is a number.
- The rows are streamed through a server-side cursor in one read-only REPEATABLE READ snapshot
  (the row count the progress is measured against is that of the rows read), in served_at order,
  BATCH_ROWS at a time: memory does not grow with the number of rows.
Runs where the API runs (`make replay`), since it reads the models volume.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson
from sqlalchemy import Select, and_, create_engine, func, select
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from berth_api.bundles.bundle import (
    NAME_PATTERN,
    BundleError,
    BundleMetadata,
    ModelBundle,
    load_bundle,
    version_sort_key,
)
from berth_api.bundles.trust import TrustPolicy
from berth_api.errors import BerthError, InvalidInput
from berth_api.serving.compiled import TOLERANCE
from berth_api.serving.features import rows_from_instances
from berth_api.serving.predictor import ModelOutput, Predicts
from berth_api.serving.registry import choose_predictor
from berth_common.logconfig import configure_logging
from berth_common.settings import ApiSettings, load_or_exit
from berth_common.tables import feedback, predictions, replays

BATCH_ROWS = 5_000
# Relative tolerance within which a regressor's two answers agree (see the module docstring).
AGREEMENT_TOLERANCE = TOLERANCE
# Distinct skip reasons kept per served version; any further ones are counted together.
MAX_SKIP_REASONS = 10
OTHER_REASONS = "other reasons"
PROGRESS_INTERVAL_SECONDS = 2.0

Task = Literal["classification", "regression"]


def same_label(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and 1.0 are, true and 1 are not."""
    return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def agrees(task: Task, candidate: Any, served: Any) -> bool:
    if task == "classification":
        return same_label(candidate, served)
    return (
        is_number(candidate)
        and is_number(served)
        and abs(candidate - served) <= AGREEMENT_TOLERANCE * max(1.0, abs(served))
    )


@dataclass
class VersionReplay:
    """What the candidate made of the rows one version served. `rows` counts the rows scored;
    skipped rows are in `skipped` (by reason) and in no other figure."""

    served_version: str
    rows: int = 0
    agreed: int = 0
    skipped: int = 0
    skip_reasons: Counter[str] = field(default_factory=Counter)
    labelled: int = 0
    served_correct: int = 0
    candidate_correct: int = 0
    # sums of absolute and squared errors on the labelled rows (regressors)
    served_abs: float = 0.0
    served_sq: float = 0.0
    candidate_abs: float = 0.0
    candidate_sq: float = 0.0

    def skip(self, reason: str) -> None:
        self.skipped += 1
        if reason not in self.skip_reasons and len(self.skip_reasons) >= MAX_SKIP_REASONS:
            reason = OTHER_REASONS
        self.skip_reasons[reason] += 1

    def add(self, task: Task, candidate: Any, served: Any, actual: Any) -> None:
        self.rows += 1
        self.agreed += agrees(task, candidate, served)
        if task == "classification":
            if actual is None:
                return
            self.labelled += 1
            self.served_correct += same_label(served, actual)
            self.candidate_correct += same_label(candidate, actual)
        elif is_number(actual) and is_number(served):
            self.labelled += 1
            served_error, candidate_error = abs(served - actual), abs(candidate - actual)
            self.served_abs += served_error
            self.served_sq += served_error * served_error
            self.candidate_abs += candidate_error
            self.candidate_sq += candidate_error * candidate_error

    def figures(self, task: Task) -> dict[str, Any]:
        """The counts and errors as the `replays` table holds them."""
        classifier, errors = task == "classification", task == "regression" and self.labelled > 0
        return {
            "served_version": self.served_version,
            "rows": self.rows,
            "agreed": self.agreed,
            "labelled": self.labelled,
            "served_correct": self.served_correct if classifier else None,
            "candidate_correct": self.candidate_correct if classifier else None,
            "served_mae": self.served_abs / self.labelled if errors else None,
            "candidate_mae": self.candidate_abs / self.labelled if errors else None,
            "served_rmse": math.sqrt(self.served_sq / self.labelled) if errors else None,
            "candidate_rmse": math.sqrt(self.candidate_sq / self.labelled) if errors else None,
        }

    def summary(self, task: Task) -> dict[str, Any]:
        """The figures, the shares they make, and the skipped rows."""
        figures = self.figures(task)
        correct = task == "classification" and self.labelled > 0
        return {
            **figures,
            "agreement": self.agreed / self.rows if self.rows else None,
            "served_accuracy": self.served_correct / self.labelled if correct else None,
            "candidate_accuracy": self.candidate_correct / self.labelled if correct else None,
            "skipped": self.skipped,
            "skip_reasons": dict(self.skip_reasons.most_common()),
        }


@dataclass(frozen=True)
class StoredRow:
    served_version: str
    features: Any
    prediction: Any
    actual: Any


class CandidateScorer:
    """Checks stored rows against the candidate's features and predicts them in batches."""

    def __init__(
        self, metadata: BundleMetadata, predictor: Predicts, *, max_string_length: int
    ) -> None:
        self.metadata = metadata
        self.task: Task = metadata.task
        self.predictor = predictor
        self._max_string_length = max_string_length

    def score(self, batch: Sequence[StoredRow], tallies: dict[str, VersionReplay]) -> None:
        checked = self._check([stored.features for stored in batch])
        valid = [row for row in checked if not isinstance(row, str)]
        outputs = iter(self._predict(valid) if valid else [])
        for stored, row in zip(batch, checked, strict=True):
            tally = tallies.get(stored.served_version)
            if tally is None:
                tally = tallies[stored.served_version] = VersionReplay(stored.served_version)
            outcome = row if isinstance(row, str) else next(outputs)
            if isinstance(outcome, str):
                tally.skip(outcome)
            else:
                tally.add(self.task, outcome.label, stored.prediction, stored.actual)

    def _check(self, instances: list[Any]) -> list[list[Any] | str]:
        """Each instance as a model row, or why the candidate cannot take it. The API checks a
        request whole; a batch with a bad row is checked again row by row to find which."""
        try:
            return list(self._rows(instances))
        except InvalidInput:
            pass
        checked: list[list[Any] | str] = []
        for instance in instances:
            try:
                checked.extend(self._rows([instance]))
            except InvalidInput as exc:
                messages = "; ".join(e.message for e in exc.errors) or exc.detail
                checked.append(f"features: {messages}")
        return checked

    def _rows(self, instances: list[Any]) -> list[list[Any]]:
        return rows_from_instances(
            self.metadata,
            instances,
            max_rows=len(instances),
            max_string_length=self._max_string_length,
        )

    def _predict(self, rows: list[list[Any]]) -> list[ModelOutput | str]:
        """The candidate's outputs; a batch the model refuses is halved until the rows it
        refuses are found, and those are answered with the reason."""
        try:
            return list(self.predictor.predict(rows))
        except BerthError as exc:
            if len(rows) == 1:
                message = exc.errors[0].message if exc.errors else exc.detail
                return [f"model: {message}"]
        middle = len(rows) // 2
        return self._predict(rows[:middle]) + self._predict(rows[middle:])


@dataclass(frozen=True)
class ReplayReport:
    replay_id: str
    model_name: str
    candidate_version: str
    task: Task
    engine: str
    since: datetime | None
    until: datetime | None
    started_at: datetime
    finished_at: datetime
    versions: list[VersionReplay]

    @property
    def rows_read(self) -> int:
        return sum(v.rows + v.skipped for v in self.versions)

    def table_rows(self) -> list[dict[str, Any]]:
        """One `replays` row per served version."""
        common = {
            "replay_id": self.replay_id,
            "model_name": self.model_name,
            "candidate_version": self.candidate_version,
            "since": self.since,
            "until": self.until,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }
        return [{**common, **version.figures(self.task)} for version in self.versions]

    def as_dict(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "model_name": self.model_name,
            "candidate_version": self.candidate_version,
            "task": self.task,
            "engine": self.engine,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "rows_read": self.rows_read,
            "versions": [version.summary(self.task) for version in self.versions],
        }


class Progress:
    """Rows done out of the total, and the rate, on `stream` at most every `interval` seconds."""

    def __init__(
        self,
        stream: TextIO | None,
        total: int,
        label: str,
        *,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream, self._total, self._label = stream, total, label
        self._interval, self._clock = interval, clock
        self._start = self._last = clock()
        self.done = 0

    def advance(self, rows: int) -> None:
        self.done += rows
        if self._clock() - self._last >= self._interval:
            self._write()

    def finish(self) -> None:
        self._write()

    def _write(self) -> None:
        now = self._last = self._clock()
        if self._stream is None:
            return
        elapsed = max(now - self._start, 1e-9)
        share = self.done / self._total if self._total else 1.0
        self._stream.write(
            f"{self._label}: {self.done:,} / {self._total:,} rows ({share:.0%}), "
            f"{self.done / elapsed:,.0f} rows/s, {elapsed:.1f} s\n"
        )
        self._stream.flush()


def load_candidate(settings: ApiSettings, name: str, version: str) -> ModelBundle:
    """The candidate bundle, loaded and verified as the API would load it."""
    if not (NAME_PATTERN.match(name) and NAME_PATTERN.match(version)):
        raise BundleError(f"{name!r}/{version!r} is not a bundle name and version")
    bundle_dir = settings.models_dir / name / version
    if not bundle_dir.is_dir():
        raise BundleError(f"no bundle {name}/{version} in {settings.models_dir}")
    return load_bundle(
        bundle_dir,
        allow_version_mismatch=settings.allow_version_mismatch,
        trust=TrustPolicy.from_settings(settings),
    )


def _served(name: str, since: datetime | None, until: datetime | None) -> Any:
    conditions = [predictions.c.model_name == name]
    if since is not None:
        conditions.append(predictions.c.served_at >= since)
    if until is not None:
        conditions.append(predictions.c.served_at < until)
    return and_(*conditions)


def stored_rows_query(name: str, since: datetime | None, until: datetime | None) -> Select[Any]:
    """The model's stored rows in served_at order, each with its actual (its newest feedback)."""
    latest = (
        select(feedback.c.request_id, feedback.c.row_index, feedback.c.actual)
        .ext(distinct_on(feedback.c.request_id, feedback.c.row_index))
        .order_by(
            feedback.c.request_id,
            feedback.c.row_index,
            feedback.c.received_at.desc(),
            # two received at the same instant: the order the latest_feedback view takes too
            feedback.c.feedback_id.desc(),
        )
        .subquery("latest_feedback")
    )
    return (
        select(
            predictions.c.model_version,
            predictions.c.features,
            predictions.c.prediction,
            latest.c.actual,
        )
        .select_from(
            predictions.outerjoin(
                latest,
                and_(
                    latest.c.request_id == predictions.c.request_id,
                    latest.c.row_index == predictions.c.row_index,
                ),
            )
        )
        .where(_served(name, since, until))
        .order_by(predictions.c.served_at, predictions.c.request_id, predictions.c.row_index)
    )


def replay(
    settings: ApiSettings,
    engine: Engine,
    name: str,
    version: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: TextIO | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ReplayReport:
    """Scores the model's stored traffic with the candidate and stores the report in `replays`.
    BundleError when the candidate cannot be loaded; SQLAlchemyError from the database."""
    bundle = load_candidate(settings, name, version)
    scorer = CandidateScorer(
        bundle.metadata,
        choose_predictor(bundle, settings),
        max_string_length=settings.max_string_length,
    )
    started_at = datetime.now(UTC)
    tallies: dict[str, VersionReplay] = {}
    # one read-only snapshot: the count is that of the rows streamed
    snapshot = engine.connect().execution_options(
        isolation_level="REPEATABLE READ", postgresql_readonly=True
    )
    with snapshot as connection, connection.begin():
        total = connection.execute(
            select(func.count()).select_from(predictions).where(_served(name, since, until))
        ).scalar_one()
        meter = Progress(progress, total, f"replay {name}/{version} ({scorer.predictor.engine})")
        result = connection.execution_options(stream_results=True, yield_per=batch_rows).execute(
            stored_rows_query(name, since, until)
        )
        for batch in result.partitions():
            scorer.score(_stored(batch), tallies)
            meter.advance(len(batch))
        meter.finish()
    report = ReplayReport(
        replay_id=str(uuid.uuid4()),
        model_name=name,
        candidate_version=version,
        task=scorer.task,
        engine=scorer.predictor.engine,
        since=since,
        until=until,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        versions=sorted(tallies.values(), key=lambda v: version_sort_key(v.served_version)),
    )
    rows = report.table_rows()
    if rows:
        with engine.begin() as connection:
            connection.execute(replays.insert(), rows)
    return report


def _stored(batch: Iterable[Sequence[Any]]) -> list[StoredRow]:
    return [
        StoredRow(version, features, served, actual) for version, features, served, actual in batch
    ]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _percent(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _number(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "-"


def render(report: ReplayReport) -> str:
    """The report as a table, one line per served version."""
    window = (
        f"{_iso(report.since) or 'the beginning'} .. {_iso(report.until) or 'now'}"
        if report.since or report.until
        else "all stored traffic"
    )
    seconds = (report.finished_at - report.started_at).total_seconds()
    lines = [
        f"replay {report.replay_id}: {report.model_name} traffic through candidate "
        f"{report.model_name}/{report.candidate_version} ({report.task}, {report.engine})",
        f"  {window}; {report.rows_read:,} rows read in {seconds:.1f} s",
    ]
    if not report.versions:
        lines.append(f"  no stored rows of {report.model_name} in that range")
        return "\n".join(lines)
    header = ["served by", "rows", "agreed", "agreement", "skipped", "labelled"]
    if report.task == "classification":
        header += ["served acc.", "candidate acc."]
    else:
        header += ["served MAE", "candidate MAE", "served RMSE", "candidate RMSE"]
    table = [header]
    for version in report.versions:
        cells = [
            version.served_version,
            f"{version.rows:,}",
            f"{version.agreed:,}",
            _percent(version.agreed, version.rows),
            f"{version.skipped:,}",
            f"{version.labelled:,}",
        ]
        if report.task == "classification":
            cells += [
                _percent(version.served_correct, version.labelled),
                _percent(version.candidate_correct, version.labelled),
            ]
        else:
            figures = version.figures(report.task)
            cells += [
                _number(figures[key])
                for key in ("served_mae", "candidate_mae", "served_rmse", "candidate_rmse")
            ]
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        # the version left-aligned, the figures right-aligned
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  " + "  ".join(cells))
    if report.task == "regression":
        lines.append(
            f"  (a regressor agrees within {AGREEMENT_TOLERANCE:g} x max(1, |served value|))"
        )
    skipped = [(v.served_version, r, n) for v in report.versions for r, n in v.skip_reasons.items()]
    if skipped:
        lines.append("  skipped, the candidate cannot score them:")
        lines += [f"    served by {v}: {n:,} x {reason}" for v, reason, n in skipped]
    return "\n".join(lines)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m berth_api.ledger.replay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", required=True, help="the model whose traffic is replayed")
    parser.add_argument("--version", required=True, help="the candidate version to score it with")
    parser.add_argument("--since", type=_moment, help="ISO time (UTC if no zone); default: all")
    parser.add_argument("--until", type=_moment, help="ISO time, excluded; default: all")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    settings = load_or_exit(ApiSettings)
    configure_logging(settings.log_level, settings.log_format)
    # orjson reads the jsonb columns about twice as fast as the json module
    engine = create_engine(settings.database_url, json_deserializer=orjson.loads)
    try:
        report = replay(
            settings,
            engine,
            args.name,
            args.version,
            since=args.since,
            until=args.until,
            progress=None if args.quiet else sys.stderr,
        )
    except BundleError as exc:
        print(f"berth replay: cannot load the candidate: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"berth replay: cannot read the ledger: {exc!r}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(json.dumps(report.as_dict()) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
