"""Writes stream entries to PostgreSQL and says which of them may be acknowledged.

The fast path is one COPY per batch straight into `predictions`, inside a savepoint, committed
together with the dead letters of malformed entries. COPY is the cheapest way into PostgreSQL for
both processes: no statement to build or parse per row, and PostgreSQL parses each chunk of rows
while the writer formats the next.

A COPY is not idempotent: a record stored before (an entry delivered again after a worker died
between its commit and its acknowledgement) fails it with a unique violation. The savepoint is then
rolled back and the batch goes the careful way, one COPY into a temporary staging table and one
`INSERT ... SELECT ... ON CONFLICT DO NOTHING` from it. A batch holding records of requests that
their clients named (X-Request-ID, an idempotency key) always goes that way, and is also checked
against what the ledger holds: a record whose request id is stored, or first in the batch, for a
different request goes to `ledger_conflicts` instead, never over the first request's rows and
never nowhere.

Only when the database refuses the batch for something in the data does the writer fall back to
one transaction per entry, so that a single bad entry cannot hold up the others. Connection failures
are not handled here: they propagate, nothing is acknowledged, and the consumer retries the whole
batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol, cast

from pydantic_core import to_json
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from berth_common.ledger import (
    MalformedEntry,
    PredictionRecord,
    decode_entry,
    decode_feedback_entry,
    encode_feedback_entry,
    is_feedback_entry,
    raw_entry_text,
)
from berth_common.tables import LedgerDeadLetter, ledger_conflicts, predictions
from berth_worker.feedback import FeedbackEntry, FeedbackOutcome, UnstoredRows, store_feedback

log = logging.getLogger(__name__)

# Errors that the same data will raise again on every attempt. A NUL character, which no
# PostgreSQL string can hold, and a lone surrogate, which jsonb refuses, are DataErrors from the
# server; a ValueError would come from Python, for a string that cannot be encoded as UTF-8.
DATA_ERRORS: tuple[type[Exception], ...] = (IntegrityError, DataError, ValueError)

# The columns a record fills, in the order of the record's fields; stored_at is the server's.
RECORD_COLUMNS: tuple[str, ...] = tuple(PredictionRecord.model_fields)
STAGING_TABLE = "berth_predictions_staging"
_COLUMN_LIST = ", ".join(RECORD_COLUMNS)
# Session-local, created by each connection's first batch (and again after a rollback undid
# that), emptied by every commit. CREATE TABLE AS takes the column types of the table and nothing
# else, so a value the table cannot hold is refused by the COPY, with the type's own error; the
# ordinal keeps the order of the records in the batch. (The statements are put together from the
# constants above only, never from data.)
_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} ON COMMIT DELETE ROWS AS "  # noqa: S608
    f"SELECT {_COLUMN_LIST}, 0::integer AS ordinal FROM {predictions.name} WITH NO DATA"
)
_COPY_STAGING = f"COPY {STAGING_TABLE} ({_COLUMN_LIST}, ordinal) FROM STDIN"
_COPY_PREDICTIONS = f"COPY {predictions.name} ({_COLUMN_LIST}) FROM STDIN"
# PostgreSQL's SQLSTATE for a duplicate key.
_UNIQUE_VIOLATION = "23505"
_INSERT_FROM_STAGING = (
    f"INSERT INTO {predictions.name} ({_COLUMN_LIST}) "  # noqa: S608
    f"SELECT {_COLUMN_LIST} FROM {STAGING_TABLE} "
    "ON CONFLICT (request_id, row_index) DO NOTHING"
)
# For a batch with named requests. A named request's rows belong to the request the ledger holds
# under its id or, when it holds none, to the first request in the batch with that id; a record
# with another fingerprint is a conflict. Rows of requests Berth named are never checked: their
# ids are random. Gives the rows inserted and the conflicts kept.
_CONFLICT_COLUMNS = f"{_COLUMN_LIST}, stored_request_hash"
_INSERT_CHECKED = f"""
WITH named AS (
    SELECT DISTINCT ON (s.request_id) s.request_id, s.request_hash AS first_hash,
           stored.found, stored.stored_hash
    FROM {STAGING_TABLE} s
    LEFT JOIN LATERAL (
        SELECT true AS found, p.request_hash AS stored_hash
        FROM {predictions.name} p WHERE p.request_id = s.request_id LIMIT 1
    ) stored ON true
    WHERE s.request_hash IS NOT NULL
    ORDER BY s.request_id, s.ordinal
),
checked AS (
    SELECT s.*, n.stored_hash AS stored_request_hash,
           COALESCE(s.request_hash IS NOT NULL AND n.request_id IS NOT NULL
                    AND s.request_hash IS DISTINCT FROM
                        (CASE WHEN n.found THEN n.stored_hash ELSE n.first_hash END),
                    false) AS conflicting
    FROM {STAGING_TABLE} s LEFT JOIN named n USING (request_id)
),
conflicts AS (
    INSERT INTO {ledger_conflicts.name} ({_CONFLICT_COLUMNS})
    SELECT {_CONFLICT_COLUMNS} FROM checked WHERE conflicting
    ON CONFLICT (request_id, row_index, request_hash) DO NOTHING
    RETURNING request_id
),
inserted AS (
    INSERT INTO {predictions.name} ({_COLUMN_LIST})
    SELECT {_COLUMN_LIST} FROM checked WHERE NOT conflicting
    ON CONFLICT (request_id, row_index) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM conflicts),
       (SELECT array_agg(DISTINCT request_id) FROM conflicts)
"""  # noqa: S608
# COPY's text format: a tab between columns, a newline after each row, \N for NULL; these four
# characters must be written as backslash escapes wherever they occur inside a value.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_NULL = "\\N"

DELETED_ENTRY_ERROR = "entry was deleted from the stream before it was stored"


class StreamEntry(NamedTuple):
    """One stream entry as read from Redis, with how often the group has delivered it."""

    stream_id: str
    # Empty when the entry was trimmed or deleted from the stream while it was still pending.
    fields: dict[bytes, bytes] | dict[str, str]
    delivery_count: int


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The fate of each entry of a batch; everything committed is in `stored` or `dead_lettered`."""

    stored: tuple[str, ...] = ()
    dead_lettered: tuple[str, ...] = ()
    # Not written and not dead-lettered yet: leave them pending so they are delivered again.
    deferred: tuple[str, ...] = ()
    rows_inserted: int = 0
    # Records kept in ledger_conflicts: their request id stands for a different request.
    rows_conflicting: int = 0
    # When each committed record was served (Unix time): the ledger's lag, measured.
    served_at: tuple[float, ...] = ()
    # Feedback rows written to `feedback` (new actuals, corrections) and `feedback_duplicates`.
    feedback_stored: int = 0
    feedback_duplicates: int = 0

    @property
    def ackable(self) -> tuple[str, ...]:
        return self.stored + self.dead_lettered


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    stream_id: str
    payload: str
    error: str
    delivery_count: int


class LedgerWriter:
    """Stores ledger entries idempotently: writing an entry twice leaves one row per record."""

    def __init__(self, engine: Engine, *, max_deliveries: int) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be >= 1")
        self._engine = engine
        self._max_deliveries = max_deliveries

    def store(self, entries: Sequence[StreamEntry]) -> StoreResult:
        """Writes a batch; raises SQLAlchemyError when the database could not be used at all.

        Predictions first, then feedback, in one transaction: feedback that follows its
        prediction in the stream finds it stored.
        """
        decoded: list[tuple[StreamEntry, list[PredictionRecord]]] = []
        labelled: list[FeedbackEntry] = []
        dead: list[_DeadLetter] = []
        for entry in entries:
            try:
                if entry.fields and is_feedback_entry(entry.fields):
                    labelled.append(
                        FeedbackEntry(
                            entry.stream_id,
                            entry.delivery_count,
                            decode_feedback_entry(entry.fields),
                        )
                    )
                else:
                    decoded.append((entry, _decode(entry)))
            except MalformedEntry as exc:
                log.warning(
                    "ledger entry %s is malformed, dead-lettering it: %s",
                    entry.stream_id,
                    exc,
                    extra={"stream_id": entry.stream_id},
                )
                dead.append(_dead_letter(entry, str(exc)))
        if not decoded and not dead and not labelled:
            return StoreResult()
        try:
            with self._engine.begin() as connection:
                rows, conflicts = _insert_records(
                    connection, [r for _, records in decoded for r in records]
                )
                feedback = store_feedback(connection, labelled, self._max_deliveries)
                _insert_dead_letters(connection, dead + _feedback_dead_letters(feedback))
        except DATA_ERRORS as exc:
            log.warning(
                "batch of %d ledger entries refused (%s); storing them one at a time",
                len(entries),
                _describe(exc),
            )
            return self._store_one_at_a_time(decoded, labelled, dead)
        return StoreResult(
            stored=(*(entry.stream_id for entry, _ in decoded), *feedback.stored),
            dead_lettered=(
                *(letter.stream_id for letter in dead),
                *(letter.stream_id for letter in feedback.dead_letters),
            ),
            deferred=tuple(feedback.deferred),
            rows_inserted=rows,
            rows_conflicting=conflicts,
            served_at=_served_at(r for _, records in decoded for r in records),
            feedback_stored=feedback.rows_stored,
            feedback_duplicates=feedback.duplicates,
        )

    def _store_one_at_a_time(
        self,
        decoded: list[tuple[StreamEntry, list[PredictionRecord]]],
        labelled: list[FeedbackEntry],
        dead: list[_DeadLetter],
    ) -> StoreResult:
        stored: list[str] = []
        deferred: list[str] = []
        served_at: list[float] = []
        rows = conflicts = 0
        feedback = FeedbackOutcome()
        # in stream order, so that feedback finds the predictions stored before it
        work: list[tuple[StreamEntry | FeedbackEntry, list[PredictionRecord] | None]] = [
            *decoded,
            *((entry, None) for entry in labelled),
        ]
        work.sort(key=lambda item: _stream_order(item[0].stream_id))
        for entry, records in work:
            try:
                with self._engine.begin() as connection:
                    if records is None:
                        assert isinstance(entry, FeedbackEntry)
                        outcome = store_feedback(connection, [entry], self._max_deliveries)
                        _insert_dead_letters(connection, _feedback_dead_letters(outcome))
                    else:
                        inserted, conflicting = _insert_records(connection, records)
            except DATA_ERRORS as exc:
                reason = _describe(exc)
                if entry.delivery_count >= self._max_deliveries:
                    log.error(
                        "ledger entry %s still cannot be stored after %d deliveries, "
                        "dead-lettering it: %s",
                        entry.stream_id,
                        entry.delivery_count,
                        reason,
                        extra={"stream_id": entry.stream_id},
                    )
                    error = f"not stored after {entry.delivery_count} deliveries: {reason}"
                    if isinstance(entry, FeedbackEntry):
                        fields = encode_feedback_entry(entry.records)
                        entry = StreamEntry(entry.stream_id, fields, entry.delivery_count)
                    dead.append(_dead_letter(entry, error))
                else:
                    log.warning(
                        "ledger entry %s cannot be stored (delivery %d of %d), "
                        "leaving it pending: %s",
                        entry.stream_id,
                        entry.delivery_count,
                        self._max_deliveries,
                        reason,
                        extra={"stream_id": entry.stream_id},
                    )
                    deferred.append(entry.stream_id)
            else:
                if records is None:
                    feedback.stored += outcome.stored
                    feedback.deferred += outcome.deferred
                    feedback.dead_letters += outcome.dead_letters
                    feedback.rows_stored += outcome.rows_stored
                    feedback.duplicates += outcome.duplicates
                    continue
                rows += inserted
                conflicts += conflicting
                served_at.extend(_served_at(records))
                stored.append(entry.stream_id)
        if dead:
            with self._engine.begin() as connection:
                _insert_dead_letters(connection, dead)
        return StoreResult(
            stored=(*stored, *feedback.stored),
            dead_lettered=(
                *(letter.stream_id for letter in dead),
                *(letter.stream_id for letter in feedback.dead_letters),
            ),
            deferred=(*deferred, *feedback.deferred),
            rows_inserted=rows,
            rows_conflicting=conflicts,
            served_at=tuple(served_at),
            feedback_stored=feedback.rows_stored,
            feedback_duplicates=feedback.duplicates,
        )


def _stream_order(stream_id: str) -> tuple[int, int]:
    millis, _, sequence = stream_id.partition("-")
    try:
        return int(millis), int(sequence or 0)
    except ValueError:
        return (0, 0)


def _feedback_dead_letters(outcome: FeedbackOutcome) -> list[_DeadLetter]:
    return [_unstored_letter(rows) for rows in outcome.dead_letters]


def _unstored_letter(rows: UnstoredRows) -> _DeadLetter:
    """A dead letter holding the feedback rows of an entry that were not stored, as an entry of
    its own: what the audit counts and what an operator would send again."""
    entry = StreamEntry(rows.stream_id, encode_feedback_entry(rows.records), rows.delivery_count)
    return _dead_letter(entry, rows.error)


def _served_at(records: Iterable[PredictionRecord]) -> tuple[float, ...]:
    return tuple(record.served_at.timestamp() for record in records)


def _decode(entry: StreamEntry) -> list[PredictionRecord]:
    if not entry.fields:
        raise MalformedEntry(DELETED_ENTRY_ERROR)
    return decode_entry(entry.fields)


def _insert_records(connection: Connection, records: list[PredictionRecord]) -> tuple[int, int]:
    """Inserts the records that are not stored yet: how many that was, and how many conflicted
    with the request their id stands for (kept in ledger_conflicts)."""
    if not records:
        return 0, 0
    named = any(record.request_hash is not None for record in records)
    if not named and _copy_new(connection, records):
        return len(records), 0
    connection.exec_driver_sql(_CREATE_STAGING)
    _copy(connection, _COPY_STAGING, _CopySource(records, ordinals=True))
    if not named:
        return connection.exec_driver_sql(_INSERT_FROM_STAGING).rowcount, 0
    inserted, conflicts, request_ids = connection.exec_driver_sql(_INSERT_CHECKED).one()
    if conflicts:
        log.error(
            "%d records reuse the request id of a different request and were kept in %s, not "
            "stored: request ids %s",
            conflicts,
            ledger_conflicts.name,
            ", ".join(sorted(request_ids)[:20]),
        )
    return int(inserted), int(conflicts)


def _copy_new(connection: Connection, records: list[PredictionRecord]) -> bool:
    """COPYs records none of whose requests was named straight into `predictions`: True if they
    are stored; False, with nothing of them kept, if one of them was stored already.

    The staging step writes every row twice. Skipping it, LedgerWriter.store against
    PostgreSQL 15 on a 2-core machine (medians of 8 and 6 alternated runs): the database
    backend's CPU per row went from 16.7 to 11.8 us for batches of 350 one-row entries and from
    17.2 to 11.3 us for batches of five 100-row entries; a whole store from 43 to 38 and from
    35.5 to 29.4 us per row."""
    try:
        with connection.begin_nested():
            _copy(connection, _COPY_PREDICTIONS, _CopySource(records, ordinals=False))
    except IntegrityError as exc:
        if getattr(exc.orig, "pgcode", None) != _UNIQUE_VIOLATION:
            raise
        return False
    return True


def _json(value: object) -> str:
    """JSON text for a jsonb column, by pydantic's serialiser in Rust: a fifth of json.dumps's
    cost, which was a third of the worker's Python time per row. Integers of any size are written
    exactly; a NaN would be written as NaN for PostgreSQL to refuse, never as a quiet null; a
    lone surrogate raises a ValueError, one of the data errors."""
    # Every control character is written as an escape, so only backslashes need one for COPY.
    return to_json(value, inf_nan_mode="constants").decode().replace("\\", "\\\\")


class _CopySource:
    """COPY data written a chunk at a time as psycopg2 reads it, so that PostgreSQL parses one
    chunk while the next one is being written.

    psycopg2 turns an exception raised by read() into a QueryCanceled, which would pass for a
    database failure and be retried for ever; it is kept here instead, the data ends early, and
    _copy raises it once the COPY is over. (The contract already refuses the strings that UTF-8
    cannot encode, a lone surrogate; should one get here all the same, it is a ValueError, one of
    the data errors.)
    """

    def __init__(self, records: Sequence[PredictionRecord], *, ordinals: bool) -> None:
        self._records = enumerate(records)
        # the staging table's last column: the record's place in the batch
        self._ordinals = ordinals
        self.error: Exception | None = None
        # The rows of one request share their id, model, version and time, and a batch mostly one
        # model: each is escaped or formatted once per batch, not once per row.
        self._escaped: dict[str, str] = {}
        self._instants: dict[datetime, str] = {}

    def _escape(self, value: str) -> str:
        escaped = self._escaped.get(value)
        if escaped is None:
            escaped = self._escaped[value] = value.translate(_COPY_ESCAPES)
        return escaped

    def _instant(self, value: datetime) -> str:
        # (two times equal as instants share a key, whatever their offsets: timestamptz keeps
        # the instant only, so either's text stores the same value)
        text = self._instants.get(value)
        if text is None:
            text = self._instants[value] = value.isoformat()
        return text

    def _line(self, record: PredictionRecord, ordinal: int) -> str:
        """One row of COPY text."""
        # An absent probabilities is SQL NULL, so that `probabilities IS NULL` finds it.
        probabilities = _COPY_NULL if record.probabilities is None else _json(record.probabilities)
        values = (
            self._escape(record.request_id),
            str(record.row_index),
            self._escape(record.model_name),
            self._escape(record.model_version),
            _json(record.features),
            _json(record.prediction),
            probabilities,
            "t" if record.cached else "f",
            repr(record.latency_ms),
            self._instant(record.served_at),
            _COPY_NULL if record.request_hash is None else record.request_hash,
        )
        if self._ordinals:
            return "\t".join(values) + f"\t{ordinal}\n"
        return "\t".join(values) + "\n"

    def read(self, size: int) -> bytes:
        if self.error is not None:
            return b""
        lines: list[str] = []
        length = 0
        try:
            for ordinal, record in self._records:
                line = self._line(record, ordinal)
                lines.append(line)
                length += len(line)
                if length >= size:
                    break
            return "".join(lines).encode("utf-8")
        except Exception as exc:
            self.error = exc
            return b""


class _CopyCursor(Protocol):
    def copy_expert(self, sql: str, file: _CopySource) -> None: ...

    def close(self) -> None: ...


class _CopyConnection(Protocol):
    def cursor(self) -> _CopyCursor: ...


def _copy(connection: Connection, statement: str, source: _CopySource) -> None:
    """COPY ... FROM STDIN on the connection's own transaction, through psycopg2's cursor.

    SQLAlchemy has no COPY, so its usual translation of driver errors is done here: a refused
    value must reach the caller as the DataError that any other statement would raise, and a lost
    connection as an error the consumer retries.
    """
    dialect = connection.dialect
    dbapi_error = dialect.loaded_dbapi.Error
    cursor = cast(_CopyConnection, connection.connection.driver_connection).cursor()
    try:
        cursor.copy_expert(statement, source)
    except dbapi_error as exc:
        # As SQLAlchemy does for its own statements: a connection found dead leaves the pool now,
        # instead of failing the rollback that follows.
        disconnected = dialect.is_disconnect(exc, connection.connection, None)
        if disconnected:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, dbapi_error, connection_invalidated=disconnected, dialect=dialect
        ) from exc
    finally:
        cursor.close()
    if source.error is not None:
        raise source.error


def _insert_dead_letters(connection: Connection, letters: list[_DeadLetter]) -> None:
    if not letters:
        return
    statement = (
        insert(LedgerDeadLetter)
        .values(
            [
                {
                    "stream_id": letter.stream_id,
                    "payload": letter.payload,
                    "error": letter.error,
                    "delivery_count": letter.delivery_count,
                }
                for letter in letters
            ]
        )
        .on_conflict_do_nothing(index_elements=["stream_id"])
    )
    connection.execute(statement)


def _dead_letter(entry: StreamEntry, error: str) -> _DeadLetter:
    return _DeadLetter(
        stream_id=entry.stream_id,
        payload=_storable(raw_entry_text(entry.fields)),
        error=_storable(error),
        delivery_count=entry.delivery_count,
    )


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL; a dead letter must never fail for the reason it exists.
    return text.replace("\x00", "\ufffd")


def _describe(exc: Exception) -> str:
    if isinstance(exc, DBAPIError):
        return " ".join(str(exc.orig).split())
    return f"{type(exc).__name__}: {exc}"
