"""Feedback's books against a real ledger in every state a row of feedback can be in: received =
stored + duplicates + pending + spooled + dead-lettered, and the predictions' books unchanged."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from berth_api.app import create_app
from berth_api.ledger.audit import FeedbackBooks, audit, audit_feedback
from berth_api.ledger.spool import LedgerSpool
from berth_common.settings import ApiSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter

SETOSA = [5.1, 3.5, 1.4, 0.2]
CSV = {"content-type": "text/csv"}


def test_feedback_books_balance_through_every_state(
    settings: ApiSettings,
    client: TestClient,
    redis_client: redis.Redis,
    worker_settings: WorkerSettings,
    engine: Engine,
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    consumer = LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=3))
    outage_spool = settings.spool_dir.parent / "outage-spool"
    audited = settings.model_copy(update={"spool_dir": outage_spool})

    def books() -> tuple[int, int, int, int, int, int, int]:
        found = audit_feedback(audited, redis_client, engine, since, datetime.now(UTC))
        return (
            found.received,
            found.stored,
            found.duplicates,
            found.pending,
            found.spooled,
            found.dead_lettered,
            found.unaccounted,
        )

    client.post("/predict", json={"features": SETOSA}, headers={"X-Request-ID": "a-1"})
    consumer.run(until_idle=True)
    # a value, the same again, and a correction in bulk
    client.post("/v1/predictions/a-1/feedback", json={"actuals": ["setosa"]})
    client.post("/v1/predictions/a-1/feedback", json={"actuals": ["setosa"]})
    client.post(
        "/v1/feedback", content=b"request_id,row_index,actual\na-1,0,virginica\n", headers=CSV
    )
    consumer.run(until_idle=True)
    assert books() == (3, 2, 1, 0, 0, 0, 0)

    # no worker running: pending in the stream
    client.post("/v1/predictions/a-1/feedback", json={"actuals": ["versicolor"]})
    assert books() == (4, 2, 1, 1, 0, 0, 0)

    # Redis down: spooled, one request checked against the database, and an upload with a row
    # of a request nobody can say anything about (accepted unchecked)
    down = audited.model_copy(update={"redis_port": 1, "spool_replay_interval_seconds": 3600})
    with TestClient(create_app(down), raise_server_exceptions=False) as outage:
        assert (
            outage.post("/v1/predictions/a-1/feedback", json={"actuals": ["setosa"]}).status_code
            == 202
        )
        upload = b"request_id,row_index,actual\na-1,0,setosa\nnever,0,setosa\n"
        assert outage.post("/v1/feedback", content=upload, headers=CSV).json()["unvalidated"] == 1
    assert books() == (7, 2, 1, 1, 3, 0, 0)

    # Redis back: the spool moves into the stream, counted as it goes
    spool = LedgerSpool(outage_spool)
    with TestClient(create_app(audited), raise_server_exceptions=False):
        wait_until(lambda: not spool.has_entries())
    assert books() == (7, 2, 1, 4, 0, 0, 0)

    # the worker stores what it can; the upload's entry waits for `never`, its other row stored
    consumer.run(until_idle=True)
    assert books() == (7, 4, 2, 1, 0, 0, 0)

    # `never` never comes: at the last delivery its row is dead-lettered, and only it
    wait_until(lambda: books()[5] == 1, step=lambda: consumer.run(until_idle=True))
    assert books() == (7, 4, 2, 0, 0, 1, 0)
    # the feedback's dead letter is not a broken prediction entry for the other books
    predictions = audit(audited, redis_client, engine, since, datetime.now(UTC))
    assert (predictions.served, predictions.stored, predictions.dead_lettered) == (1, 1, 0)
    assert predictions.unaccounted == 0


def test_a_feedback_row_lost_between_the_counter_and_the_table_unbalances_the_books(
    settings: ApiSettings,
    client: TestClient,
    redis_client: redis.Redis,
    worker_settings: WorkerSettings,
    engine: Engine,
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    client.post("/predict", json={"features": SETOSA}, headers={"X-Request-ID": "a-2"})
    client.post("/v1/predictions/a-2/feedback", json={"actuals": ["setosa"]})
    LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=3)).run(
        until_idle=True
    )
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM feedback"))
    books: FeedbackBooks = audit_feedback(settings, redis_client, engine, since, datetime.now(UTC))
    assert (books.received, books.stored, books.unaccounted) == (1, 0, 1)


def wait_until(
    done: Callable[[], bool], step: Callable[[], object] | None = None, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        if step is not None:
            step()
        time.sleep(0.1)
