"""Ledger backlog benchmark: queue N rows on the ledger stream, then time the worker storing them.

Run inside the api container, which has Berth's packages and the stack's environment; the script
is piped on stdin so that the image needs no copy of it:

    docker compose exec -T api python - fill --rows 200000 --tag run1 < bench/backlog.py
    # start (or unpause) the worker, then at once:
    docker compose exec -T api python - drain --expect 200000 --tag run1 < bench/backlog.py

`fill` appends entries through berth_common.ledger.encode_entry, the contract the API itself
writes, with request ids `bench-<tag>-<n>` and the shape of the demo model's rows (four float
features, a string label, three class probabilities). It prints
{"rows", "entries", "seconds"}, the seconds being the time to encode and XADD everything.

`drain` waits until the worker's consumer group has read and acknowledged the whole stream, then
checks that the tag's stored rows have reached --expect (it goes on polling until they have), and
prints:

- `wall_seconds`, `wall_rows_per_second`: from the start of `drain` until the poll that first saw
  every row. Call it when the worker starts, and this includes the worker's start-up; it is an
  upper bound, too long by at most one `poll_interval_seconds`.
- `stored_span_seconds`, `stored_rows_per_second`: max(stored_at) - min(stored_at) of the tag's
  rows. stored_at is the start of the inserting transaction, so the span leaves out the read and
  decoding of the first batch and the insert and commit of the last one: it is the steady-state
  rate, too high by about one batch's worth of time, and says nothing about start-up.

Until the backlog is through, a poll is one XINFO GROUPS on Redis, cheap enough not to disturb
the worker; the rows are counted in PostgreSQL only after that (see backlog_may_be_stored).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Connection, create_engine, text

from berth_common.ledger import PredictionRecord, encode_entry
from berth_common.replies import as_text
from berth_common.settings import CommonSettings, load_or_exit

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASSES = ("setosa", "versicolor", "virginica")
# Entries per pipeline round trip: large enough to hide the latency, small enough to stay cheap.
PIPELINE_ENTRIES = 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="backlog.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fill_parser = commands.add_parser("fill", help="queue rows on the ledger stream")
    fill_parser.add_argument("--rows", type=positive, required=True)
    fill_parser.add_argument("--rows-per-entry", type=positive, default=1)
    fill_parser.add_argument("--tag", type=tag_text, default="bench")
    drain_parser = commands.add_parser("drain", help="wait until the worker has stored them")
    drain_parser.add_argument("--expect", type=positive, required=True)
    drain_parser.add_argument("--tag", type=tag_text, required=True)
    drain_parser.add_argument("--timeout", type=float, default=600.0)
    drain_parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args(argv)

    settings = load_or_exit(CommonSettings)
    if args.command == "fill":
        report = fill(settings, args.rows, args.rows_per_entry, args.tag)
    else:
        report = drain(settings, args.expect, args.tag, args.timeout, args.interval)
    print(json.dumps(report))
    return 0 if "error" not in report else 1


def positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return number


def tag_text(value: str) -> str:
    # The tag is matched with LIKE; letters, digits, '.' and '-' need no escaping there.
    if not value or not all(c.isascii() and (c.isalnum() or c in ".-") for c in value):
        raise argparse.ArgumentTypeError("use letters, digits, '.' and '-' only")
    return value


def fill(settings: CommonSettings, rows: int, rows_per_entry: int, tag: str) -> dict[str, Any]:
    client = redis.Redis(**settings.redis_kwargs())
    rng = random.Random(rows)
    started = time.perf_counter()
    entries = 0
    pipe = client.pipeline(transaction=False)
    for first in range(0, rows, rows_per_entry):
        records = [
            bench_record(f"bench-{tag}-{entries}", index, rng)
            for index in range(min(rows_per_entry, rows - first))
        ]
        pipe.xadd(settings.ledger_stream, encode_entry(records))  # type: ignore[arg-type]
        entries += 1
        if entries % PIPELINE_ENTRIES == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return {"rows": rows, "entries": entries, "seconds": round(time.perf_counter() - started, 3)}


def bench_record(request_id: str, row_index: int, rng: random.Random) -> PredictionRecord:
    """A row as the demo model serves it; values vary so that no two rows are alike."""
    weights = [rng.random() for _ in CLASSES]
    total = sum(weights)
    probabilities = {name: weight / total for name, weight in zip(CLASSES, weights, strict=True)}
    return PredictionRecord(
        request_id=request_id,
        row_index=row_index,
        model_name="iris",
        model_version="1",
        features={name: round(rng.uniform(0.1, 7.9), 1) for name in FEATURES},
        prediction=max(probabilities, key=probabilities.__getitem__),
        probabilities=probabilities,
        cached=False,
        latency_ms=round(rng.uniform(0.5, 3.0), 3),
        served_at=datetime.now(UTC),
    )


def drain(
    settings: CommonSettings, expect: int, tag: str, timeout: float, interval: float
) -> dict[str, Any]:
    started = time.perf_counter()
    client = redis.Redis(**settings.redis_kwargs())
    engine = create_engine(settings.database_url)
    report: dict[str, Any] = {"poll_interval_seconds": interval}
    count = 0
    with engine.connect() as connection:
        while True:
            if backlog_may_be_stored(client, settings):
                count = tagged_count(connection, tag)
            waited = time.perf_counter() - started
            if count >= expect:
                break
            if waited > timeout:
                report.update(error=f"timed out after {timeout}s", rows=count)
                break
            time.sleep(interval)
        if "error" not in report:
            report.update(rows=count, **rates(connection, tag, count, waited))
    engine.dispose()
    client.close()
    return report


def backlog_may_be_stored(client: redis.Redis, settings: CommonSettings) -> bool:
    """False while the worker's group still has entries to read or to acknowledge.

    Counting a tag's rows is a sequential scan of `predictions` (LIKE cannot use the primary key
    under most collations), which on a small machine would take CPU from the worker it measures;
    XINFO costs Redis next to nothing, so the rows are counted only once it says the backlog is
    through: the group has been handed the stream's last entry and holds none unacknowledged.
    Not the group's `lag`, which Redis keeps only approximately (berth_common.backlog).
    """
    try:
        stream = client.xinfo_stream(settings.ledger_stream)
        groups = client.xinfo_groups(settings.ledger_stream)
    except redis.ResponseError:
        return False  # no stream yet
    for group in groups:
        if as_text(group["name"]) == settings.ledger_group:
            delivered = as_text(group["last-delivered-id"])
            return delivered == as_text(stream["last-generated-id"]) and group["pending"] == 0
    return False


def tagged_count(connection: Connection, tag: str) -> int:
    result = connection.execute(
        text("SELECT count(*) FROM predictions WHERE request_id LIKE :pattern"),
        {"pattern": f"bench-{tag}-%"},
    )
    count = int(result.scalar_one())
    # Each poll in its own transaction, so that every poll sees the rows committed since the last.
    connection.commit()
    return count


def rates(connection: Connection, tag: str, count: int, waited: float) -> dict[str, Any]:
    span = connection.execute(
        text(
            "SELECT extract(epoch FROM max(stored_at) - min(stored_at)) FROM predictions "
            "WHERE request_id LIKE :pattern"
        ),
        {"pattern": f"bench-{tag}-%"},
    ).scalar_one()
    span_seconds = float(span)
    return {
        "wall_seconds": round(waited, 3),
        "wall_rows_per_second": round(count / waited) if waited else None,
        "stored_span_seconds": round(span_seconds, 3),
        "stored_rows_per_second": round(count / span_seconds) if span_seconds else None,
    }


if __name__ == "__main__":
    sys.exit(main())
