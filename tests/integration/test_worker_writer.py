"""The writer's COPY path against a real PostgreSQL: exact values, data errors, lost connections."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from berth_common.ledger import PredictionRecord, encode_entry
from berth_common.settings import WorkerSettings
from berth_worker.clients import worker_engine
from berth_worker.writer import DATA_ERRORS, STAGING_TABLE, LedgerWriter, StreamEntry
from tests.factories import make_record

MAX_DELIVERIES = 3
# Everything COPY's text format gives a meaning to, and text that merely looks like it.
AWKWARD = 'tab\t lf\n cr\r crlf\r\n bs\\ \\N \\. \\t "quoted" \x01 é 漢字 😀 \u2028'


@pytest.fixture
def writer(engine: Engine) -> LedgerWriter:
    return LedgerWriter(engine, max_deliveries=MAX_DELIVERIES)


def entry(stream_id: str, *records: PredictionRecord, deliveries: int = 1) -> StreamEntry:
    return StreamEntry(stream_id, encode_entry(list(records)), deliveries)


def raw_entry(stream_id: str, records_text: str, deliveries: int = 1) -> StreamEntry:
    return StreamEntry(stream_id, {"v": "1", "records": records_text}, deliveries)


def stored_rows(engine: Engine) -> dict[tuple[str, int], dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT request_id, row_index, model_name, model_version, features, prediction, "
                "probabilities, probabilities IS NULL AS no_probabilities, cached, latency_ms, "
                "served_at, request_hash FROM predictions"
            )
        )
        return {(row.request_id, row.row_index): dict(row._mapping) for row in result}


def dead_letter_errors(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        result = connection.execute(text("SELECT stream_id, error FROM ledger_dead_letters"))
        return {row.stream_id: row.error for row in result}


def as_stored(record: PredictionRecord) -> dict[str, Any]:
    return {
        **record.model_dump(),
        "no_probabilities": record.probabilities is None,
    }


def test_every_value_is_stored_exactly(writer: LedgerWriter, engine: Engine) -> None:
    awkward = make_record(
        f"req {AWKWARD}",
        model_name=AWKWARD,
        model_version="v\t1\\",
        features={
            AWKWARD: AWKWARD,
            "backslashes": "\\\\",
            "int": 3,
            "big": 12345678901234567890,
            "wider than 64 bits": 2**70 + 1,
            "negative": -(2**63) - 1,
            "float": 0.1,
            "true": True,
            "none": None,
        },
        prediction=AWKWARD,
        probabilities={AWKWARD: 0.25, "other": 0.75},
        cached=True,
        latency_ms=0.1 + 0.2,
        served_at=datetime(2024, 5, 17, 18, 0, 15, 123456, tzinfo=timezone(timedelta(hours=5.5))),
    )
    others = [
        make_record("plain", 0, prediction=None, probabilities=None),
        make_record("plain", 1, prediction=2, features={}),
        make_record("plain", 2, prediction=2.5),
        make_record("plain", 3, prediction=False),
    ]

    result = writer.store([entry("1-0", awkward), entry("2-0", *others)])

    assert result.stored == ("1-0", "2-0")
    assert result.rows_inserted == 5
    rows = stored_rows(engine)
    assert rows == {(r.request_id, r.row_index): as_stored(r) for r in [awkward, *others]}
    # a prediction of None is the JSON value null, absent probabilities are SQL NULL
    assert rows[("plain", 0)]["prediction"] is None
    assert rows[("plain", 0)]["no_probabilities"] is True


def test_storing_again_inserts_nothing(writer: LedgerWriter, engine: Engine) -> None:
    batch = [entry(f"{n}-0", make_record(f"again-{n}", prediction=AWKWARD)) for n in range(3)]
    # the same record twice within one batch, too
    batch.append(entry("9-0", make_record("again-0", prediction=AWKWARD)))

    first = writer.store(batch)
    second = writer.store(batch)

    assert (first.rows_inserted, len(first.stored)) == (3, 4)
    assert (second.rows_inserted, len(second.stored)) == (0, 4)
    assert len(stored_rows(engine)) == 3


@pytest.fixture
def sent(engine: Engine) -> Iterator[list[str]]:
    """Every statement the engine sends during the test (COPY itself goes around SQLAlchemy)."""
    statements: list[str] = []

    def note(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", note)
    yield statements
    event.remove(engine, "before_cursor_execute", note)


def test_new_records_are_copied_in_and_a_redelivery_among_them_falls_back(
    writer: LedgerWriter, engine: Engine, sent: list[str]
) -> None:
    first = [make_record(f"mixed-{n}", latency_ms=1.0) for n in range(2)]
    # delivered again after a crash, with a value the first delivery did not have: the first
    # stays, as with any record stored twice
    again = [make_record(f"mixed-{n}", latency_ms=9.0) for n in range(2)]
    new = [make_record(f"mixed-{n}", latency_ms=2.0) for n in range(2, 5)]

    fresh = writer.store([entry("1-0", *first)])
    fresh_statements = list(sent)
    mixed = writer.store([entry("2-0", new[0]), entry("3-0", *again), entry("4-0", *new[1:])])

    # fresh records went straight into the table, without the staging step
    assert not any(STAGING_TABLE in statement for statement in fresh_statements)
    assert any("SAVEPOINT" in statement for statement in fresh_statements)
    # the redelivered ones made the batch take it: nothing of the failed COPY stayed behind
    assert any(STAGING_TABLE in statement for statement in sent[len(fresh_statements) :])
    assert (fresh.rows_inserted, mixed.rows_inserted) == (2, 3)
    assert mixed.stored == ("2-0", "3-0", "4-0")
    rows = stored_rows(engine)
    assert {key: row["latency_ms"] for key, row in rows.items()} == {
        ("mixed-0", 0): 1.0,
        ("mixed-1", 0): 1.0,
        ("mixed-2", 0): 2.0,
        ("mixed-3", 0): 2.0,
        ("mixed-4", 0): 2.0,
    }


@pytest.mark.parametrize(
    "changes",
    [
        # in a text column, where COPY's data would carry a NUL byte
        pytest.param({"request_id": "nul\x00id"}, id="request-id"),
        pytest.param({"model_version": "1\x00"}, id="model-version"),
        # in a jsonb column, where it arrives as the escape \u0000
        pytest.param({"features": {"note": "a\x00b"}}, id="feature-value"),
        pytest.param({"features": {"no\x00te": 1.0}}, id="feature-name"),
        pytest.param({"prediction": "\x00"}, id="prediction"),
    ],
)
def test_a_nul_character_is_a_data_error_of_its_entry_only(
    writer: LedgerWriter, engine: Engine, changes: dict[str, Any]
) -> None:
    changes = {"request_id": "bad", **changes}
    batch = [
        entry("1-0", make_record("good-1")),
        entry("2-0", make_record(**changes)),
        entry("3-0", make_record("good-2"), make_record("good-2", 1)),
    ]

    pending = writer.store(batch)

    assert pending.stored == ("1-0", "3-0")
    assert pending.deferred == ("2-0",)
    assert pending.dead_lettered == ()
    assert sorted(stored_rows(engine)) == [("good-1", 0), ("good-2", 0), ("good-2", 1)]

    last_delivery = writer.store([batch[1]._replace(delivery_count=MAX_DELIVERIES)])

    assert last_delivery.dead_lettered == ("2-0",)
    error = dead_letter_errors(engine)["2-0"]
    assert error.startswith(f"not stored after {MAX_DELIVERIES} deliveries: ")
    assert "0x00" in error or "\\u0000" in error
    assert len(stored_rows(engine)) == 3


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param('"note":null', '"note":"\\ud800"', id="feature-value"),
        pytest.param('"note":null', '"\\udc00":null', id="feature-name"),
    ],
)
def test_a_lone_surrogate_is_a_data_error_of_its_entry_only(
    writer: LedgerWriter, engine: Engine, old: str, new: str
) -> None:
    # Valid JSON that the contract accepts, but not a character: jsonb refuses it.
    records_text = encode_entry([make_record("bad")])["records"].replace(old, new)
    assert records_text != encode_entry([make_record("bad")])["records"]
    batch = [
        entry("1-0", make_record("good-1")),
        raw_entry("2-0", records_text, deliveries=MAX_DELIVERIES),
        entry("3-0", make_record("good-2")),
    ]

    result = writer.store(batch)

    assert result.stored == ("1-0", "3-0")
    assert result.dead_lettered == ("2-0",)
    assert "surrogate" in dead_letter_errors(engine)["2-0"]
    assert sorted(stored_rows(engine)) == [("good-1", 0), ("good-2", 0)]


@pytest.fixture
def pooled_engine(settings: WorkerSettings) -> Iterator[Engine]:
    engine = worker_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(worker_settings: WorkerSettings) -> WorkerSettings:
    return worker_settings


class CopyKiller(threading.Thread):
    """Terminates the backend that is running the writer's COPY into `table`, as a database
    restart would."""

    def __init__(self, engine: Engine, table: str) -> None:
        super().__init__(daemon=True)
        self._engine = engine
        self._table = table
        self.killed = False
        self.stop = threading.Event()

    def run(self) -> None:
        with self._engine.connect() as connection:
            while not self.stop.is_set() and not self.killed:
                self.killed = bool(
                    connection.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE state = 'active' AND query LIKE :copy"
                        ),
                        {"copy": f"COPY {self._table} %"},
                    ).scalar_one()
                )
                connection.commit()


@pytest.mark.parametrize(
    ("request_hash", "table"),
    [
        # Berth's own request ids: the COPY straight into predictions
        pytest.param(None, "predictions", id="copy-into-predictions"),
        # ids the clients named: the COPY into the staging table, checked from there
        pytest.param("f" * 64, STAGING_TABLE, id="copy-into-staging"),
    ],
)
def test_a_connection_lost_during_copy_is_an_error_to_retry_not_bad_data(
    pooled_engine: Engine, engine: Engine, request_hash: str | None, table: str
) -> None:
    writer = LedgerWriter(pooled_engine, max_deliveries=1)
    served_at = datetime.now(UTC)
    # large enough that the COPY is still running when the killer looks for it
    batch = [
        entry(f"{n}-0", make_record(f"lost-{n}", served_at=served_at, request_hash=request_hash))
        for n in range(30_000)
    ]
    killer = CopyKiller(engine, table)
    killer.start()
    try:
        with pytest.raises(SQLAlchemyError) as raised:
            writer.store(batch)
    finally:
        killer.stop.set()
        killer.join(timeout=10)

    assert killer.killed
    # what the consumer retries with backoff, not a data error to store one entry at a time for
    assert isinstance(raised.value, OperationalError)
    assert not isinstance(raised.value, DATA_ERRORS)
    assert raised.value.connection_invalidated
    assert stored_rows(engine) == {}
    assert dead_letter_errors(engine) == {}

    retried = writer.store(batch)

    assert len(retried.stored) == 30_000
    assert retried.rows_inserted == 30_000
