"""`python -m berth_api.ledger.audit [--since ISO] [--until ISO]`: do the ledger's books balance?

For a time range (by the minute each row was served) it counts, from independent sources:
- served: the API's per-minute counters in Redis, incremented with every ledger append (and,
  for entries spooled while Redis was down, when they are replayed), plus the spooled rows;
- stored: rows in `predictions`;
- pending: rows in stream entries not yet acknowledged by a worker (unread or in flight);
- spooled: rows waiting in the API's spool for Redis;
- dead-lettered: rows of entries in `ledger_dead_letters`.
served = stored + pending + spooled + dead-lettered when nothing is lost. A client that sends the
same X-Request-ID twice is served twice and stored once, which shows as a surplus of served rows.

Feedback has books of its own, by the minute each row was received: received (the API's counters,
plus the spooled rows) = stored (`feedback`) + duplicates (`feedback_duplicates`, values that
repeated the one in effect) + pending (in the stream, not yet stored: rows of an entry that waits
for its prediction and were already stored count as stored) + spooled + dead-lettered.
Runs where the API runs (`make audit`), since it reads the spool volume.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from berth_api.ledger.spool import LedgerSpool
from berth_common.keys import RedisKeys
from berth_common.ledger import (
    FeedbackRecord,
    MalformedEntry,
    PredictionRecord,
    decode_entry,
    decode_feedback_entry,
    is_feedback_entry,
)
from berth_common.settings import ApiSettings, load_or_exit
from berth_common.tables import feedback, feedback_duplicates, ledger_dead_letters, predictions


@dataclass(frozen=True)
class Books:
    since: str
    until: str
    served: int
    stored: int
    pending: int
    spooled: int
    dead_lettered: int

    @property
    def unaccounted(self) -> int:
        return self.served - self.stored - self.pending - self.spooled - self.dead_lettered

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unaccounted": self.unaccounted}


def audit(
    settings: ApiSettings, client: redis.Redis, engine: Engine, since: datetime, until: datetime
) -> Books:
    # The counters are per minute: whole minutes, so every source counts the same rows.
    since, until = _whole_minutes(since, until)
    spooled = _in_range(spooled_records(LedgerSpool(settings.spool_dir)), since, until)
    served = served_rows(client, settings.keys, since, until) + spooled
    waiting = [
        (entry_id, [r for r in _records(fields) if since <= r.served_at < until])
        for entry_id, fields in _waiting_entries(client, settings)
        if not is_feedback_entry(fields)
    ]
    with _snapshot(engine) as connection:
        stored = stored_rows(connection, since, until)
        dead_lettered = dead_lettered_rows(connection, since, until)
        settled = _settled(connection, waiting)
    return Books(
        since=since.isoformat(),
        until=until.isoformat(),
        served=served,
        stored=stored,
        pending=sum(len(records) for _, records in waiting) - settled,
        spooled=spooled,
        dead_lettered=dead_lettered,
    )


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """One view of the tables, read after the stream: a worker stores an entry's rows before it
    acknowledges the entry, so an entry no longer waiting is in this view, and one still waiting
    when the stream was read may be in it as well (`_settled`). Counted table by table, as the
    worker went on meanwhile, rows it stored between two counts were in neither."""
    with engine.connect() as connection:
        connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


def _settled(connection: Connection, waiting: list[tuple[str, list[PredictionRecord]]]) -> int:
    """The rows of waiting entries that the view has already stored or dead-lettered."""
    if not waiting:
        return 0
    dead = set(
        connection.execute(
            text(
                f"SELECT stream_id FROM {ledger_dead_letters.name} "  # noqa: S608
                "WHERE stream_id = ANY(CAST(:ids AS text[]))"
            ),
            {"ids": [entry_id for entry_id, _ in waiting]},
        ).scalars()
    )
    rows = [record for entry_id, records in waiting if entry_id not in dead for record in records]
    stored = connection.execute(
        text(
            f"SELECT count(*) FROM {predictions.name} p "  # noqa: S608
            "JOIN unnest(CAST(:ids AS text[]), CAST(:rows AS integer[])) "
            "AS k(request_id, row_index) "
            "ON p.request_id = k.request_id AND p.row_index = k.row_index"
        ),
        {"ids": [r.request_id for r in rows], "rows": [r.row_index for r in rows]},
    ).scalar_one()
    return int(stored) + sum(len(records) for entry_id, records in waiting if entry_id in dead)


@dataclass(frozen=True)
class FeedbackBooks:
    since: str
    until: str
    received: int
    stored: int
    duplicates: int
    pending: int
    spooled: int
    dead_lettered: int

    @property
    def unaccounted(self) -> int:
        accounted = self.stored + self.duplicates + self.pending + self.spooled + self.dead_lettered
        return self.received - accounted

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unaccounted": self.unaccounted}


def audit_feedback(
    settings: ApiSettings, client: redis.Redis, engine: Engine, since: datetime, until: datetime
) -> FeedbackBooks:
    """The books of feedback rows received in the range (whole minutes, as for predictions)."""
    since, until = _whole_minutes(since, until)
    spooled = _received_in(spooled_feedback(LedgerSpool(settings.spool_dir)), since, until)
    received = received_rows(client, settings.keys, since, until) + spooled
    waiting = list(pending_feedback(client, settings))
    with _snapshot(engine) as connection:
        stored = _count_received(connection, feedback, since, until)
        duplicates = _count_received(connection, feedback_duplicates, since, until)
        dead_lettered = dead_lettered_feedback(connection, since, until)
        pending = _received_in(_not_stored(connection, waiting), since, until)
    return FeedbackBooks(
        since=since.isoformat(),
        until=until.isoformat(),
        received=received,
        stored=stored,
        duplicates=duplicates,
        pending=pending,
        spooled=spooled,
        dead_lettered=dead_lettered,
    )


def _whole_minutes(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    since = since.replace(second=0, microsecond=0)
    if until.second or until.microsecond:
        until = until.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return since, until


def _count_received(connection: Any, table: Any, since: datetime, until: datetime) -> int:
    query = select(func.count()).where(table.c.received_at >= since, table.c.received_at < until)
    return int(connection.execute(query).scalar_one())


def received_rows(client: redis.Redis, keys: RedisKeys, since: datetime, until: datetime) -> int:
    """Feedback rows the API accepted per its counters, by the minute they were received."""
    return _counted(client, keys.feedback_received, since, until)


def pending_feedback(client: redis.Redis, settings: ApiSettings) -> Iterable[FeedbackRecord]:
    """Feedback rows of entries no worker has acknowledged."""
    for _, fields in _waiting_entries(client, settings):
        if is_feedback_entry(fields):
            yield from _feedback_records(fields)


def spooled_feedback(spool: LedgerSpool) -> Iterable[FeedbackRecord]:
    for fields in _spooled_entries(spool):
        if is_feedback_entry(fields):
            yield from _feedback_records(fields)


def dead_lettered_feedback(connection: Connection, since: datetime, until: datetime) -> int:
    """Feedback rows of dead letters received in the range (a dead letter holds only the rows
    that were not stored); a feedback entry too broken to say counts once if it failed within."""
    total = 0
    for fields, failed_at in _dead_letters(connection):
        if fields is None or not is_feedback_entry(fields):
            continue
        try:
            records = decode_feedback_entry(fields)
        except MalformedEntry:
            total += since <= failed_at < until
            continue
        total += _received_in(records, since, until)
    return total


def _not_stored(connection: Connection, waiting: list[FeedbackRecord]) -> list[FeedbackRecord]:
    """Pending rows less those stored already: an entry waiting for one row's prediction keeps
    its other rows, stored at its first delivery, in the stream until it is acknowledged; and
    the worker may have stored an entry since the stream was read."""
    if not waiting:
        return waiting
    ids = [record.feedback_id for record in waiting]
    done = set(
        connection.execute(
            select(feedback.c.feedback_id)
            .where(feedback.c.feedback_id.in_(ids))
            .union_all(
                select(feedback_duplicates.c.feedback_id).where(
                    feedback_duplicates.c.feedback_id.in_(ids)
                )
            )
        ).scalars()
    )
    return [record for record in waiting if record.feedback_id not in done]


def _feedback_records(fields: Any) -> list[FeedbackRecord]:
    try:
        return decode_feedback_entry(fields)
    except MalformedEntry:
        return []  # the worker will dead-letter it; it is counted there


def _received_in(records: Iterable[FeedbackRecord], since: datetime, until: datetime) -> int:
    return sum(1 for record in records if since <= record.received_at < until)


def served_rows(client: redis.Redis, keys: RedisKeys, since: datetime, until: datetime) -> int:
    return _counted(client, keys.served, since, until)


def _counted(
    client: redis.Redis,
    key_of: Callable[[datetime], tuple[str, str]],
    since: datetime,
    until: datetime,
) -> int:
    """The sum of per-minute counters (a hash per UTC day) over the minutes of the range."""
    total = 0
    day = since.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < until:
        key, _ = key_of(day)
        for field, count in client.hgetall(key).items():
            hour, minute = (int(part) for part in _text(field).split(":"))
            minute_start = day.replace(hour=hour, minute=minute)
            if since <= minute_start < until:
                total += int(count)
        day += timedelta(days=1)
    return total


def stored_rows(connection: Connection, since: datetime, until: datetime) -> int:
    query = select(func.count()).where(
        predictions.c.served_at >= since, predictions.c.served_at < until
    )
    return int(connection.execute(query).scalar_one())


def _waiting_entries(client: redis.Redis, settings: ApiSettings) -> Iterable[tuple[str, Any]]:
    """The id and fields of every entry no worker has acknowledged (never delivered, or
    delivered and pending), once each."""
    stream, group = settings.ledger_stream, settings.ledger_group
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return  # no stream yet
    last_delivered = next(
        (_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == group), None
    )
    start = "-" if last_delivered is None else f"({last_delivered}"
    for entry_id, fields in client.xrange(stream, min=start, max="+") or []:
        yield _text(entry_id), fields
    if last_delivered is None:
        return  # no worker has read anything yet: every entry was counted above
    pending = client.xpending_range(stream, group, min="-", max="+", count=1_000_000)
    for row in pending:
        entry_id = _text(row["message_id"])
        for _, fields in client.xrange(stream, min=entry_id, max=entry_id) or []:
            yield entry_id, fields


def spooled_records(spool: LedgerSpool) -> Iterable[PredictionRecord]:
    for fields in _spooled_entries(spool):
        if not is_feedback_entry(fields):
            yield from _records(fields)


def _spooled_entries(spool: LedgerSpool) -> Iterable[Any]:
    for path in spool.segments():
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            continue  # replayed meanwhile
        for line in lines:
            if line.endswith("\n"):
                yield json.loads(line)


def dead_lettered_rows(connection: Connection, since: datetime, until: datetime) -> int:
    """Rows of dead-lettered entries served in the range; an entry too broken to say counts once
    if it failed within the range. Feedback entries have books of their own."""
    total = 0
    for fields, failed_at in _dead_letters(connection):
        if fields is not None and is_feedback_entry(fields):
            continue
        try:
            if fields is None:
                raise MalformedEntry("payload is not JSON")
            records = decode_entry(fields)
        except MalformedEntry:
            total += since <= failed_at < until
            continue
        total += _in_range(records, since, until)
    return total


def _dead_letters(connection: Connection) -> list[tuple[Any, datetime]]:
    """Each dead letter's entry fields (None when its payload is not a JSON object), and when
    it failed."""
    rows = connection.execute(
        select(ledger_dead_letters.c.payload, ledger_dead_letters.c.failed_at)
    ).all()
    letters: list[tuple[Any, datetime]] = []
    for payload, failed_at in rows:
        try:
            fields = json.loads(payload)
        except ValueError:
            fields = None
        letters.append((fields if isinstance(fields, dict) else None, failed_at))
    return letters


def _records(fields: Any) -> list[PredictionRecord]:
    try:
        return decode_entry(fields)
    except MalformedEntry:
        return []  # the worker will dead-letter it; it is counted there


def _in_range(records: Iterable[PredictionRecord], since: datetime, until: datetime) -> int:
    return sum(1 for record in records if since <= record.served_at < until)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render(books: Books) -> str:
    return _table(
        "ledger audit",
        books.since,
        books.until,
        [
            ("served", books.served),
            ("stored (predictions)", books.stored),
            ("pending (stream, not yet stored)", books.pending),
            ("spooled (waiting for Redis)", books.spooled),
            ("dead-lettered", books.dead_lettered),
            ("unaccounted", books.unaccounted),
        ],
        " (a surplus of served rows can be client retries that reused a request id, or appends"
        " made again after Redis answered too late)",
    )


def render_feedback(books: FeedbackBooks) -> str:
    return _table(
        "feedback audit",
        books.since,
        books.until,
        [
            ("received", books.received),
            ("stored (feedback)", books.stored),
            ("duplicates (feedback_duplicates)", books.duplicates),
            ("pending (stream, not yet stored)", books.pending),
            ("spooled (waiting for Redis)", books.spooled),
            ("dead-lettered", books.dead_lettered),
            ("unaccounted", books.unaccounted),
        ],
    )


def _table(
    title: str, since: str, until: str, rows: list[tuple[str, int]], unbalanced_why: str = ""
) -> str:
    """The books as a table; the last row is what is unaccounted for."""
    width = max(len(name) for name, _ in rows)
    lines = [f"{title} {since} .. {until}"]
    lines += [f"  {name:<{width}}  {value:>10,}" for name, value in rows]
    balanced = rows[-1][1] == 0
    lines.append(
        "  the books balance" if balanced else f"  the books do NOT balance{unbalanced_why}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m berth_api.ledger.audit", description=__doc__)
    parser.add_argument("--since", type=_moment, help="ISO time (UTC if no zone); default 24 h ago")
    parser.add_argument("--until", type=_moment, help="ISO time; default now")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    until = args.until or datetime.now(UTC)
    since = args.since or until - timedelta(hours=24)
    settings = load_or_exit(ApiSettings)
    client = redis.Redis(**settings.redis_kwargs())
    engine = create_engine(settings.database_url)
    try:
        books = audit(settings, client, engine, since, until)
        labels = audit_feedback(settings, client, engine, since, until)
    except (redis.RedisError, SQLAlchemyError) as exc:
        # The books need every source; a partial count would look like a loss.
        print(f"berth audit: cannot read the ledger: {exc!r}", file=sys.stderr)
        return 2
    finally:
        client.close()
        engine.dispose()
    if args.json:
        print(json.dumps({**books.as_dict(), "feedback": labels.as_dict()}))
    else:
        print(render(books), render_feedback(labels), sep="\n\n")
    return 0 if books.unaccounted == 0 and labels.unaccounted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
