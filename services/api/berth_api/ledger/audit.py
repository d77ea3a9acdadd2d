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
Runs where the API runs (`make audit`), since it reads the spool volume.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from berth_api.ledger.spool import LedgerSpool
from berth_common.keys import RedisKeys
from berth_common.ledger import MalformedEntry, PredictionRecord, decode_entry
from berth_common.settings import ApiSettings, load_or_exit
from berth_common.tables import ledger_dead_letters, predictions


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
    since = since.replace(second=0, microsecond=0)
    if until.second or until.microsecond:
        until = until.replace(second=0, microsecond=0) + timedelta(minutes=1)
    spooled = _in_range(spooled_records(LedgerSpool(settings.spool_dir)), since, until)
    return Books(
        since=since.isoformat(),
        until=until.isoformat(),
        served=served_rows(client, settings.keys, since, until) + spooled,
        stored=stored_rows(engine, since, until),
        pending=_in_range(pending_records(client, settings), since, until),
        spooled=spooled,
        dead_lettered=dead_lettered_rows(engine, since, until),
    )


def served_rows(client: redis.Redis, keys: RedisKeys, since: datetime, until: datetime) -> int:
    total = 0
    day = since.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < until:
        key, _ = keys.served(day)
        for field, count in client.hgetall(key).items():
            hour, minute = (int(part) for part in _text(field).split(":"))
            minute_start = day.replace(hour=hour, minute=minute)
            if since <= minute_start < until:
                total += int(count)
        day += timedelta(days=1)
    return total


def stored_rows(engine: Engine, since: datetime, until: datetime) -> int:
    query = select(func.count()).where(
        predictions.c.served_at >= since, predictions.c.served_at < until
    )
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def pending_records(client: redis.Redis, settings: ApiSettings) -> Iterable[PredictionRecord]:
    """Records of entries no worker has acknowledged: never delivered, or delivered and pending."""
    stream, group = settings.ledger_stream, settings.ledger_group
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return  # no stream yet
    last_delivered = next(
        (_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == group), None
    )
    start = "-" if last_delivered is None else f"({last_delivered}"
    for _, fields in client.xrange(stream, min=start, max="+") or []:
        yield from _records(fields)
    if last_delivered is None:
        return  # no worker has read anything yet: every entry was counted above
    pending = client.xpending_range(stream, group, min="-", max="+", count=1_000_000)
    for row in pending:
        entry_id = _text(row["message_id"])
        for _, fields in client.xrange(stream, min=entry_id, max=entry_id) or []:
            yield from _records(fields)


def spooled_records(spool: LedgerSpool) -> Iterable[PredictionRecord]:
    for path in spool.segments():
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            continue  # replayed meanwhile
        for line in lines:
            if line.endswith("\n"):
                yield from _records(json.loads(line))


def dead_lettered_rows(engine: Engine, since: datetime, until: datetime) -> int:
    """Rows of dead-lettered entries served in the range; an entry too broken to say counts once
    if it failed within the range."""
    total = 0
    with engine.connect() as connection:
        rows = connection.execute(
            select(ledger_dead_letters.c.payload, ledger_dead_letters.c.failed_at)
        )
        for payload, failed_at in rows:
            try:
                records = decode_entry(json.loads(payload))
            except (MalformedEntry, ValueError):
                total += since <= failed_at < until
                continue
            total += _in_range(records, since, until)
    return total


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
    rows = [
        ("served", books.served),
        ("stored (predictions)", books.stored),
        ("pending (stream, not yet stored)", books.pending),
        ("spooled (waiting for Redis)", books.spooled),
        ("dead-lettered", books.dead_lettered),
        ("unaccounted", books.unaccounted),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"ledger audit {books.since} .. {books.until}"]
    lines += [f"  {name:<{width}}  {value:>10,}" for name, value in rows]
    lines.append(
        "  the books balance"
        if books.unaccounted == 0
        else "  the books do NOT balance (a surplus of served rows can be client retries "
        "that reused a request id)"
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
    except (redis.RedisError, SQLAlchemyError) as exc:
        # The books need every source; a partial count would look like a loss.
        print(f"berth audit: cannot read the ledger: {exc!r}", file=sys.stderr)
        return 2
    finally:
        client.close()
        engine.dispose()
    print(json.dumps(books.as_dict()) if args.json else render(books))
    return 0 if books.unaccounted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
