"""The worker's feedback path against a real PostgreSQL: values kept once with their history,
whatever order they arrive in; waiting for the prediction; what is dead-lettered and why."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from berth_common.ledger import (
    FeedbackRecord,
    PredictionRecord,
    decode_feedback_entry,
    encode_entry,
    encode_feedback_entry,
)
from berth_common.settings import WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter, StreamEntry
from tests.factories import make_record

MAX_DELIVERIES = 3
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
def writer(engine: Engine) -> LedgerWriter:
    return LedgerWriter(engine, max_deliveries=MAX_DELIVERIES)


_ids = itertools.count(1)


def stream_id() -> str:
    return f"1700000000000-{next(_ids)}"


def predictions(*records: PredictionRecord) -> StreamEntry:
    return StreamEntry(stream_id(), encode_entry(list(records)), 1)


def label(
    request_id: str,
    actual: Any,
    *,
    row_index: int = 0,
    at: int = 0,
    feedback_id: str | None = None,
) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=feedback_id or uuid.uuid4().hex,
        request_id=request_id,
        row_index=row_index,
        actual=actual,
        received_at=T0 + timedelta(seconds=at),
        source="api",
    )


def feedback(*records: FeedbackRecord, deliveries: int = 1, sid: str | None = None) -> StreamEntry:
    return StreamEntry(sid or stream_id(), encode_feedback_entry(list(records)), deliveries)


def history(engine: Engine, request_id: str) -> tuple[list[Any], list[Any]]:
    """(actuals stored, duplicates) of a request's row 0 by received_at: (feedback_id, actual),
    and for duplicates also the feedback_id they repeat."""
    with engine.connect() as connection:
        kept = connection.execute(
            text(
                "SELECT feedback_id, actual FROM feedback WHERE request_id = :r "
                "ORDER BY row_index, received_at"
            ),
            {"r": request_id},
        )
        repeated = connection.execute(
            text(
                "SELECT feedback_id, actual, duplicate_of FROM feedback_duplicates "
                "WHERE request_id = :r ORDER BY row_index, received_at"
            ),
            {"r": request_id},
        )
        return [tuple(row) for row in kept], [tuple(row) for row in repeated]


def dead_letters(engine: Engine) -> list[tuple[str, str, str]]:
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                text("SELECT stream_id, payload, error FROM ledger_dead_letters ORDER BY id")
            )
        ]


def add_model_version(engine: Engine, name: str, version: str, task: str, classes: Any) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO model_versions (model_name, model_version, task, classes, features, "
                "sha256) VALUES (:n, :v, :t, CAST(:c AS jsonb), '[]', 'x')"
            ),
            {"n": name, "v": version, "t": task, "c": json.dumps(classes)},
        )


def test_the_same_value_is_stored_once_and_a_correction_is_kept_with_its_history(
    writer: LedgerWriter, engine: Engine
) -> None:
    writer.store([predictions(make_record("r1"))])
    first, again, fixed, again_in_batch = (
        label("r1", "setosa", at=1, feedback_id="f1"),
        label("r1", "setosa", at=2, feedback_id="f2"),
        label("r1", "virginica", at=3, feedback_id="f3"),
        label("r1", "virginica", at=4, feedback_id="f4"),
    )
    result = writer.store([feedback(first)])
    assert (result.feedback_stored, result.feedback_duplicates) == (1, 0)
    result = writer.store([feedback(again), feedback(fixed), feedback(again_in_batch)])
    assert (result.feedback_stored, result.feedback_duplicates) == (1, 2)
    assert len(result.stored) == 3
    assert history(engine, "r1") == (
        [("f1", "setosa"), ("f3", "virginica")],
        [("f2", "setosa", "f1"), ("f4", "virginica", "f3")],
    )
    with engine.connect() as connection:
        latest = connection.execute(
            text("SELECT actual, revisions, times_sent FROM latest_feedback WHERE request_id='r1'")
        ).one()
    assert tuple(latest) == ("virginica", 2, 4)


def test_an_entry_delivered_again_changes_nothing(writer: LedgerWriter, engine: Engine) -> None:
    writer.store([predictions(make_record("r2"))])
    entry = feedback(label("r2", "setosa", feedback_id="g1"), label("r2", "setosa", at=1))
    first = writer.store([entry])
    again = writer.store([entry._replace(delivery_count=2)])
    assert (first.feedback_stored, first.feedback_duplicates) == (1, 1)
    assert (again.feedback_stored, again.feedback_duplicates, again.stored) == (
        0,
        0,
        (entry.stream_id,),
    )
    kept, repeated = history(engine, "r2")
    assert (len(kept), len(repeated)) == (1, 1)


# A row's values as received: a, a again, b (a correction), a (corrected back), a again.
SEQUENCE = [("a", "v1"), ("a", "v2"), ("b", "v3"), ("a", "v4"), ("a", "v5")]
EXPECTED = ([("v1", "a"), ("v3", "b"), ("v4", "a")], [("v2", "a", "v1"), ("v5", "a", "v4")])


def test_the_outcome_does_not_depend_on_the_order_values_arrive_in(
    writer: LedgerWriter, engine: Engine
) -> None:
    """Spools replayed late and redeliveries bring values out of order: the values kept and the
    duplicates are those of the order they were received in, in every arrival order and batching
    tried (a value arriving between two equal ones turns the later one back into a correction,
    or a kept one into a duplicate)."""
    rng = random.Random(7)
    orders = [list(p) for p in itertools.permutations(range(len(SEQUENCE)))]
    tried = [orders[0], orders[-1], *rng.sample(orders[1:-1], 30)]
    writer.store([predictions(*(make_record(f"perm-{i}") for i in range(len(tried))))])
    for case, order in enumerate(tried):
        request_id = f"perm-{case}"
        records = [
            label(request_id, SEQUENCE[i][0], at=i, feedback_id=f"{request_id}-{SEQUENCE[i][1]}")
            for i in order
        ]
        # arrival in batches of 1 to 3 entries
        while records:
            size = rng.randint(1, 3)
            writer.store([feedback(record) for record in records[:size]])
            records = records[size:]
        kept, repeated = history(engine, request_id)
        prefix = f"{request_id}-"
        assert (
            [(f.removeprefix(prefix), a) for f, a in kept],
            [(f.removeprefix(prefix), a, of.removeprefix(prefix)) for f, a, of in repeated],
        ) == EXPECTED, order


def test_feedback_waits_for_its_prediction_then_is_stored(
    writer: LedgerWriter, engine: Engine
) -> None:
    early = feedback(label("r3", "setosa"))
    waiting = writer.store([early])
    assert (waiting.deferred, waiting.ackable) == ((early.stream_id,), ())
    # the prediction arrives (spooled elsewhere, say); the entry is delivered again
    writer.store([predictions(make_record("r3"))])
    later = writer.store([early._replace(delivery_count=2)])
    assert later.stored == (early.stream_id,)
    assert len(history(engine, "r3")[0]) == 1


def test_a_prediction_that_never_arrives_dead_letters_only_the_rows_waiting_for_it(
    writer: LedgerWriter, engine: Engine
) -> None:
    writer.store([predictions(make_record("r4"))])
    entry = feedback(label("r4", "setosa"), label("lost", "setosa"), label("lost", 1, row_index=1))
    first = writer.store([entry])
    # the row that can be stored is, at once; the entry waits for the others
    assert first.deferred == (entry.stream_id,)
    assert len(history(engine, "r4")[0]) == 1
    last = writer.store([entry._replace(delivery_count=MAX_DELIVERIES)])
    assert last.dead_lettered == (entry.stream_id,)
    [(letter_id, payload, error)] = dead_letters(engine)
    assert letter_id == entry.stream_id
    assert error.startswith("2 of 3 feedback rows not stored: request 'lost' row 0: the prediction")
    assert "never arrived (not in predictions after 3 deliveries)" in error
    left = decode_feedback_entry(json.loads(payload))
    assert [(r.request_id, r.row_index) for r in left] == [("lost", 0), ("lost", 1)]
    assert len(history(engine, "r4")[0]) == 1


def test_actuals_are_checked_against_what_the_model_version_answers(
    writer: LedgerWriter, engine: Engine
) -> None:
    add_model_version(engine, "flags", "1", "classification", [0, 1])
    add_model_version(engine, "price", "1", "regression", None)
    writer.store(
        [
            predictions(
                make_record("c1", 0, model_name="flags", model_version="1", prediction=1),
                make_record("c1", 1, model_name="flags", model_version="1", prediction=0),
                make_record(
                    "p1", model_name="price", model_version="1", prediction=3.5, probabilities=None
                ),
                # no model_versions row: a classifier, inferred from its probabilities
                make_record("u1", model_name="old", model_version="1", prediction="setosa"),
            )
        ]
    )
    result = writer.store(
        [
            feedback(label("c1", "1"), label("c1", "0", row_index=1)),
            feedback(label("p1", "4.25")),
            feedback(label("u1", "virginica")),
            feedback(label("c1", 2)),
            feedback(label("p1", "cheap")),
            feedback(label("u1", 7)),
            feedback(label("c1", "0", row_index=2)),
        ]
    )
    assert result.feedback_stored == 4
    assert len(result.dead_lettered) == 4
    assert [row[1] for row in history(engine, "c1")[0]] == [1, 0]
    assert history(engine, "p1")[0][0][1] == 4.25
    errors = [error for _, _, error in dead_letters(engine)]
    assert "not one of the model's classes (0, 1)" in errors[0]
    assert "a regressor's actual must be a finite number" in errors[1]
    assert "the model answers text labels" in errors[2]
    assert "row_index out of range: the request has 2 rows" in errors[3]


def test_predictions_first_in_a_batch_and_the_consumer_counts_feedback(
    worker_settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    stream = worker_settings.ledger_stream
    # the feedback is appended first: still stored, since its prediction is in the same batch
    redis_client.xadd(stream, encode_feedback_entry([label("r5", "setosa")]))  # type: ignore[arg-type]
    redis_client.xadd(stream, encode_entry([make_record("r5")]))  # type: ignore[arg-type]
    redis_client.xadd(stream, encode_feedback_entry([label("r5", "setosa", at=5)]))  # type: ignore[arg-type]
    consumer = LedgerConsumer(
        worker_settings, redis_client, LedgerWriter(engine, max_deliveries=MAX_DELIVERIES)
    )
    outcome = consumer.run(until_idle=True)
    assert (outcome.acked, outcome.deferred, outcome.rows) == (3, 0, 1)
    values = consumer.metrics.set
    counters = {i.name: i for i in values.instruments}
    assert counters["berth_feedback_rows_stored_total"].values[()] == 1  # type: ignore[attr-defined]
    assert counters["berth_feedback_duplicates_total"].values[()] == 1  # type: ignore[attr-defined]
