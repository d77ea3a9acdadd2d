"""Stores feedback entries: the true outcomes of served rows, with their history.

For each row (request_id, row_index) every value received is kept once, ordered by when the API
received it (`received_at`, then feedback_id): a value that differs from the one received just
before it is an actual (`feedback`: the first value, or a correction), a value equal to it is a
duplicate (`feedback_duplicates`, a receipt naming the row it repeats). The split is recomputed
from every value received for the row whenever a new one arrives, so that it does not depend on
the order entries reach the worker (a spool replayed late, an entry redelivered): a late value
that falls between two others may turn a stored value into a duplicate of itself, or a duplicate
back into a correction, and the row's rows move between the two tables, in the same transaction.
A feedback_id already in either table is an entry stored before and delivered again: nothing
changes.

A row is stored only once its prediction is: the prediction rows are locked (FOR UPDATE), which
also keeps two workers from splitting the same row's values at once. A row whose prediction is
not stored yet makes its entry wait (not acknowledged, delivered again later) until the last
delivery, when it is dead-lettered saying the prediction never arrived; a row index the request
does not have, or an actual the model cannot have answered, is dead-lettered with the reason.
The rows of an entry that can be stored are stored at once, even while others wait; the dead
letter holds only the rows that were not.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, delete, text, update
from sqlalchemy.dialects.postgresql import ARRAY, INTEGER, TEXT, insert

from berth_common.feedback import (
    ActualRefused,
    OutcomeSpec,
    infer_spec,
    normalize_actual,
    same_actual,
)
from berth_common.ledger import FeedbackRecord
from berth_common.tables import feedback, feedback_duplicates

log = logging.getLogger(__name__)

RowKey = tuple[str, int]
# Reasons spelt out in a dead letter's error, at most.
_REASONS_SHOWN = 5

_KEYS = bindparam("request_ids", type_=ARRAY(TEXT)), bindparam("row_indexes", type_=ARRAY(INTEGER))
# The predictions of the rows, locked, with what their model version answers. (The statement
# starts with SELECT, as pg_stat_activity shows it: the fault tests look for it there.)
_LOCK_PREDICTIONS = text(
    """SELECT p.request_id, p.row_index, p.prediction,
           coalesce(jsonb_typeof(p.probabilities) = 'object', false), v.task, v.classes
    FROM predictions p
    JOIN unnest(:request_ids, :row_indexes) AS k(request_id, row_index)
      ON (p.request_id, p.row_index) = (k.request_id, k.row_index)
    LEFT JOIN model_versions v USING (model_name, model_version)
    ORDER BY p.request_id, p.row_index
    FOR UPDATE OF p
    """
).bindparams(*_KEYS)
# How many rows each request has, for rows that were not found.
_REQUEST_ROWS = text(
    "SELECT request_id, count(*) FROM predictions WHERE request_id = ANY(:request_ids) "
    "GROUP BY request_id"
).bindparams(_KEYS[0])
# Every value received so far for the rows: stored ones, then duplicates.
_RECEIVED = text(
    """
    SELECT true, f.feedback_id, f.request_id, f.row_index, f.actual, f.received_at, f.source,
           NULL::text
    FROM feedback f
    JOIN unnest(:request_ids, :row_indexes) AS k(request_id, row_index)
      ON (f.request_id, f.row_index) = (k.request_id, k.row_index)
    UNION ALL
    SELECT false, d.feedback_id, d.request_id, d.row_index, d.actual, d.received_at, d.source,
           d.duplicate_of
    FROM feedback_duplicates d
    JOIN unnest(:request_ids, :row_indexes) AS k(request_id, row_index)
      ON (d.request_id, d.row_index) = (k.request_id, k.row_index)
    """
).bindparams(*_KEYS)


class FeedbackEntry(NamedTuple):
    """A decoded feedback entry: its stream id, how often it was delivered, its rows."""

    stream_id: str
    delivery_count: int
    records: list[FeedbackRecord]


@dataclass(frozen=True, slots=True)
class UnstoredRows:
    """What an entry dead-letters: its rows that were not stored, and why."""

    stream_id: str
    delivery_count: int
    records: list[FeedbackRecord]
    error: str


@dataclass
class FeedbackOutcome:
    stored: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    dead_letters: list[UnstoredRows] = field(default_factory=list)
    # rows written to feedback / feedback_duplicates (moves between them included)
    rows_stored: int = 0
    duplicates: int = 0


@dataclass(slots=True)
class _Received:
    """One value received for a row, and where it is or goes."""

    feedback_id: str
    actual: Any
    received_at: datetime
    source: str
    request_id: str
    row_index: int
    # where it is now: True in feedback, False in feedback_duplicates, None not stored yet
    stored: bool | None
    duplicate_of: str | None = None

    @property
    def order(self) -> tuple[datetime, str]:
        return self.received_at, self.feedback_id


def store_feedback(
    connection: Connection, entries: Sequence[FeedbackEntry], max_deliveries: int
) -> FeedbackOutcome:
    """Stores what it can of the entries on the connection's transaction; says which entries
    are done (stored), wait (deferred), or leave rows to dead-letter."""
    outcome = FeedbackOutcome()
    if not entries:
        return outcome
    keys = sorted({(r.request_id, r.row_index) for entry in entries for r in entry.records})
    specs = _lock_predictions(connection, keys)
    missing = [key for key in keys if key not in specs]
    request_rows = _request_rows(connection, {request_id for request_id, _ in missing})
    history = _received(connection, [key for key in keys if key in specs])
    known = {item.feedback_id for items in history.values() for item in items}
    touched: set[RowKey] = set()
    for entry in entries:
        final = entry.delivery_count >= max_deliveries
        waiting: list[tuple[FeedbackRecord, str]] = []
        refused: list[tuple[FeedbackRecord, str]] = []
        for record in entry.records:
            if record.feedback_id in known:
                continue  # stored by an earlier delivery of this entry
            key = (record.request_id, record.row_index)
            spec = specs.get(key)
            if spec is None:
                rows = request_rows.get(record.request_id)
                if rows:
                    refused.append((record, f"row_index out of range: the request has {rows} rows"))
                else:
                    waiting.append((record, "the prediction never arrived"))
                continue
            try:
                actual = normalize_actual(record.actual, spec)
            except ActualRefused as exc:
                refused.append((record, str(exc)))
                continue
            known.add(record.feedback_id)
            history[key].append(
                _Received(
                    record.feedback_id,
                    actual,
                    record.received_at,
                    record.source,
                    record.request_id,
                    record.row_index,
                    None,
                )
            )
            touched.add(key)
        if waiting and not final:
            outcome.deferred.append(entry.stream_id)
            log.info(
                "feedback entry %s waits for %d predictions not stored yet (delivery %d of %d)",
                entry.stream_id,
                len(waiting),
                entry.delivery_count,
                max_deliveries,
                extra={"stream_id": entry.stream_id},
            )
        elif waiting or refused:
            if waiting:
                waiting = [
                    (
                        record,
                        f"{reason} (not in predictions after {entry.delivery_count} deliveries)",
                    )
                    for record, reason in waiting
                ]
            outcome.dead_letters.append(_unstored(entry, refused + waiting))
        else:
            outcome.stored.append(entry.stream_id)
    _apply(connection, [history[key] for key in sorted(touched)], outcome)
    return outcome


def _unstored(entry: FeedbackEntry, rows: list[tuple[FeedbackRecord, str]]) -> UnstoredRows:
    reasons = [
        f"request {record.request_id!r} row {record.row_index}: {reason}"
        for record, reason in rows[:_REASONS_SHOWN]
    ]
    more = f"; and {len(rows) - _REASONS_SHOWN} more" if len(rows) > _REASONS_SHOWN else ""
    error = (
        f"{len(rows)} of {len(entry.records)} feedback rows not stored: "
        + "; ".join(reasons)
        + more
    )
    log.error("feedback entry %s: %s", entry.stream_id, error, extra={"stream_id": entry.stream_id})
    return UnstoredRows(entry.stream_id, entry.delivery_count, [r for r, _ in rows], error)


def _lock_predictions(connection: Connection, keys: list[RowKey]) -> dict[RowKey, OutcomeSpec]:
    rows = connection.execute(
        _LOCK_PREDICTIONS,
        {"request_ids": [k[0] for k in keys], "row_indexes": [k[1] for k in keys]},
    )
    return {
        (request_id, row_index): infer_spec(task, classes, prediction, probabilities)
        for request_id, row_index, prediction, probabilities, task, classes in rows
    }


def _request_rows(connection: Connection, request_ids: set[str]) -> dict[str, int]:
    if not request_ids:
        return {}
    rows = connection.execute(_REQUEST_ROWS, {"request_ids": sorted(request_ids)})
    return {request_id: int(count) for request_id, count in rows}


def _received(connection: Connection, keys: list[RowKey]) -> defaultdict[RowKey, list[_Received]]:
    history: defaultdict[RowKey, list[_Received]] = defaultdict(list)
    if not keys:
        return history
    rows = connection.execute(
        _RECEIVED, {"request_ids": [k[0] for k in keys], "row_indexes": [k[1] for k in keys]}
    )
    for stored, feedback_id, request_id, row_index, actual, received_at, source, of in rows:
        history[(request_id, row_index)].append(
            _Received(feedback_id, actual, received_at, source, request_id, row_index, stored, of)
        )
    return history


def _apply(connection: Connection, rows: list[list[_Received]], outcome: FeedbackOutcome) -> None:
    """Splits each row's values into actuals and duplicates, and writes what changed."""
    to_feedback: list[_Received] = []
    to_duplicates: list[_Received] = []
    leave_feedback: list[str] = []
    leave_duplicates: list[str] = []
    repointed: list[_Received] = []
    for values in rows:
        in_effect: _Received | None = None
        for item in sorted(values, key=lambda r: r.order):
            if in_effect is not None and same_actual(item.actual, in_effect.actual):
                duplicate_of: str | None = in_effect.feedback_id
            else:
                duplicate_of, in_effect = None, item
            if duplicate_of is None:
                if item.stored is not True:
                    to_feedback.append(item)
                    if item.stored is False:
                        leave_duplicates.append(item.feedback_id)
            elif item.stored is not False:
                item.duplicate_of = duplicate_of
                to_duplicates.append(item)
                if item.stored is True:
                    leave_feedback.append(item.feedback_id)
            elif item.duplicate_of != duplicate_of:
                item.duplicate_of = duplicate_of
                repointed.append(item)
    moved = len(leave_feedback) + len(leave_duplicates)
    if moved:
        log.info(
            "feedback received out of order: %d values moved between feedback and duplicates",
            moved,
        )
    if leave_feedback:
        connection.execute(delete(feedback).where(feedback.c.feedback_id.in_(leave_feedback)))
    if leave_duplicates:
        connection.execute(
            delete(feedback_duplicates).where(
                feedback_duplicates.c.feedback_id.in_(leave_duplicates)
            )
        )
    if to_feedback:
        # the rows are locked and their feedback ids checked: a conflict cannot happen, and
        # would be the same row again if it did
        connection.execute(
            insert(feedback).on_conflict_do_nothing(index_elements=["feedback_id"]),
            [_columns(item) for item in to_feedback],
        )
    if to_duplicates:
        connection.execute(
            insert(feedback_duplicates).on_conflict_do_nothing(index_elements=["feedback_id"]),
            [{**_columns(item), "duplicate_of": item.duplicate_of} for item in to_duplicates],
        )
    for item in repointed:
        connection.execute(
            update(feedback_duplicates)
            .where(feedback_duplicates.c.feedback_id == item.feedback_id)
            .values(duplicate_of=item.duplicate_of)
        )
    outcome.rows_stored += len(to_feedback)
    outcome.duplicates += len(to_duplicates)


def _columns(item: _Received) -> dict[str, Any]:
    return {
        "feedback_id": item.feedback_id,
        "request_id": item.request_id,
        "row_index": item.row_index,
        "actual": item.actual,
        "received_at": item.received_at,
        "source": item.source,
    }
