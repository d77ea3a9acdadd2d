"""Writes stream entries to PostgreSQL and says which of them may be acknowledged.

The fast path is one INSERT per batch, committed together with the dead letters of malformed
entries, so that a batch costs one round trip and one commit. Only when the database refuses the
batch for something in the data does the writer fall back to one transaction per entry, so that a
single bad entry cannot hold up the others. Connection failures are not handled here: they
propagate, nothing is acknowledged, and the consumer retries the whole batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, null
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from berth_common.ledger import MalformedEntry, PredictionRecord, decode_entry, raw_entry_text
from berth_common.tables import LedgerDeadLetter, Prediction

log = logging.getLogger(__name__)

# Errors that the same data will raise again on every attempt. psycopg2 raises a bare ValueError,
# before anything reaches the server, for a string holding a NUL character.
DATA_ERRORS: tuple[type[Exception], ...] = (IntegrityError, DataError, ValueError)

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
        """Writes a batch; raises SQLAlchemyError when the database could not be used at all."""
        decoded: list[tuple[StreamEntry, list[PredictionRecord]]] = []
        dead: list[_DeadLetter] = []
        for entry in entries:
            try:
                decoded.append((entry, _decode(entry)))
            except MalformedEntry as exc:
                log.warning(
                    "ledger entry %s is malformed, dead-lettering it: %s",
                    entry.stream_id,
                    exc,
                    extra={"stream_id": entry.stream_id},
                )
                dead.append(_dead_letter(entry, str(exc)))
        if not decoded and not dead:
            return StoreResult()
        try:
            with self._engine.begin() as connection:
                rows = _insert_records(connection, [r for _, records in decoded for r in records])
                _insert_dead_letters(connection, dead)
        except DATA_ERRORS as exc:
            log.warning(
                "batch of %d ledger entries refused (%s); storing them one at a time",
                len(entries),
                _describe(exc),
            )
            return self._store_one_at_a_time(decoded, dead)
        return StoreResult(
            stored=tuple(entry.stream_id for entry, _ in decoded),
            dead_lettered=tuple(letter.stream_id for letter in dead),
            rows_inserted=rows,
        )

    def _store_one_at_a_time(
        self,
        decoded: list[tuple[StreamEntry, list[PredictionRecord]]],
        dead: list[_DeadLetter],
    ) -> StoreResult:
        stored: list[str] = []
        deferred: list[str] = []
        rows = 0
        for entry, records in decoded:
            try:
                with self._engine.begin() as connection:
                    rows += _insert_records(connection, records)
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
                stored.append(entry.stream_id)
        if dead:
            with self._engine.begin() as connection:
                _insert_dead_letters(connection, dead)
        return StoreResult(
            stored=tuple(stored),
            dead_lettered=tuple(letter.stream_id for letter in dead),
            deferred=tuple(deferred),
            rows_inserted=rows,
        )


def _decode(entry: StreamEntry) -> list[PredictionRecord]:
    if not entry.fields:
        raise MalformedEntry(DELETED_ENTRY_ERROR)
    return decode_entry(entry.fields)


def _insert_records(connection: Connection, records: list[PredictionRecord]) -> int:
    if not records:
        return 0
    statement = (
        insert(Prediction)
        .values([_row(record) for record in records])
        .on_conflict_do_nothing(index_elements=["request_id", "row_index"])
    )
    return connection.execute(statement).rowcount


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


def _row(record: PredictionRecord) -> dict[str, Any]:
    row = record.model_dump()
    # A record without probabilities is SQL NULL, so `probabilities IS NULL` finds it; left as
    # None, SQLAlchemy would store the JSON value null instead.
    if record.probabilities is None:
        row["probabilities"] = null()
    return row


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
