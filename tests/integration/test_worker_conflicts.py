"""Records that reach the worker with a request id the ledger holds for another request (from a
spool, say, filled while Redis could not check the id) are kept apart, never stored over the
first request and never dropped; true retries are stored once."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from berth_common.ledger import PredictionRecord, encode_entry
from berth_worker.writer import LedgerWriter, StreamEntry
from tests.factories import make_record

FIRST = "a" * 64
SECOND = "b" * 64


@pytest.fixture
def writer(engine: Engine) -> LedgerWriter:
    return LedgerWriter(engine, max_deliveries=3)


def entry(stream_id: str, *records: PredictionRecord) -> StreamEntry:
    return StreamEntry(stream_id, encode_entry(list(records)), 1)


def request(request_id: str, fingerprint: str | None, rows: int = 1, **changes: Any) -> list[Any]:
    return [make_record(request_id, i, request_hash=fingerprint, **changes) for i in range(rows)]


def table(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    columns = "request_id, row_index, request_hash"
    if name == "ledger_conflicts":
        columns += ", stored_request_hash"
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT {columns} FROM {name} ORDER BY 1, 2, 3"))
        return [tuple(row) for row in rows]


def test_a_retry_of_a_stored_request_is_stored_once(writer: LedgerWriter, engine: Engine) -> None:
    writer.store([entry("1-0", *request("r", FIRST, rows=2))])
    result = writer.store([entry("2-0", *request("r", FIRST, rows=2, cached=True))])
    assert result.stored == ("2-0",)
    assert (result.rows_inserted, result.rows_conflicting) == (0, 0)
    assert table(engine, "predictions") == [("r", 0, FIRST), ("r", 1, FIRST)]
    assert table(engine, "ledger_conflicts") == []


def test_another_request_under_a_stored_id_is_kept_apart(
    writer: LedgerWriter, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    writer.store([entry("1-0", *request("r", FIRST, rows=2))])
    # three rows where the first request had two: even the third row, whose key is free,
    # belongs to the other request and must not join the first one's rows
    result = writer.store([entry("2-0", *request("r", SECOND, rows=3, prediction="virginica"))])
    assert result.stored == ("2-0",)  # acknowledged: it is kept, in the conflicts table
    assert (result.rows_inserted, result.rows_conflicting) == (0, 3)
    assert table(engine, "predictions") == [("r", 0, FIRST), ("r", 1, FIRST)]
    assert table(engine, "ledger_conflicts") == [
        ("r", 0, SECOND, FIRST),
        ("r", 1, SECOND, FIRST),
        ("r", 2, SECOND, FIRST),
    ]
    assert "reuse the request id of a different request" in caplog.text
    # delivered again (a crash before the acknowledgement): still kept once
    writer.store([entry("2-0", *request("r", SECOND, rows=3, prediction="virginica"))])
    assert len(table(engine, "ledger_conflicts")) == 3


def test_within_one_batch_the_first_request_wins(writer: LedgerWriter, engine: Engine) -> None:
    result = writer.store(
        [
            entry("1-0", *request("r", FIRST)),
            entry("1-1", *request("r", SECOND)),
            entry("1-2", *request("r", FIRST)),  # a true retry of the first, spooled twice
            entry("1-3", *request("other", None)),
        ]
    )
    assert result.stored == ("1-0", "1-1", "1-2", "1-3")
    assert (result.rows_inserted, result.rows_conflicting) == (2, 1)
    assert table(engine, "predictions") == [("other", 0, None), ("r", 0, FIRST)]
    assert table(engine, "ledger_conflicts") == [("r", 0, SECOND, None)]


def test_a_batch_that_falls_back_to_one_entry_at_a_time_still_checks(
    writer: LedgerWriter, engine: Engine
) -> None:
    writer.store([entry("1-0", *request("r", FIRST))])
    bad = make_record("bad", 0, features={"note": "nul \x00 inside"})
    result = writer.store([entry("2-0", *request("r", SECOND)), entry("2-1", bad)])
    assert "2-0" in result.stored
    assert result.rows_conflicting == 1
    assert table(engine, "ledger_conflicts") == [("r", 0, SECOND, FIRST)]
