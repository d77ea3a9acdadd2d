"""The audit's books against a real ledger in every state a row can be in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from berth_api.app import create_app
from berth_api.ledger.audit import Books, audit, main
from berth_common.ledger import PredictionRecord, encode_entry
from berth_common.settings import ApiSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter, StreamEntry

SETOSA = [5.1, 3.5, 1.4, 0.2]


def test_books_balance_through_every_state(
    settings: ApiSettings,
    client: TestClient,
    redis_client: redis.Redis,
    worker_settings: WorkerSettings,
    engine: Engine,
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    consumer = LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=1))

    outage_spool = settings.spool_dir.parent / "outage-spool"
    audited = settings.model_copy(update={"spool_dir": outage_spool})

    def books() -> Books:
        return audit(audited, redis_client, engine, since, datetime.now(UTC))

    client.post("/predict", json={"instances": [SETOSA, SETOSA]})
    client.post("/predict", json={"features": SETOSA})
    consumer.run(until_idle=True)
    stored = books()
    assert (stored.served, stored.stored, stored.pending, stored.unaccounted) == (3, 3, 0, 0)

    # served but no worker running yet: pending in the stream
    client.post("/predict", json={"features": [6.7, 3.0, 5.2, 2.3]})
    pending = books()
    assert (pending.served, pending.stored, pending.pending, pending.unaccounted) == (4, 3, 1, 0)

    # Redis down: served from the spool, counted as spooled
    down = audited.model_copy(update={"redis_port": 1, "spool_replay_interval_seconds": 3600})
    with TestClient(create_app(down), raise_server_exceptions=False) as outage:
        assert outage.post("/predict", json={"features": SETOSA}).status_code == 200
    spooled = books()
    assert (spooled.served, spooled.spooled, spooled.unaccounted) == (5, 1, 0)

    # a poison entry ends in the dead-letter table, counted once
    redis_client.xadd(worker_settings.ledger_stream, {"v": "1", "records": "[]"})
    consumer.run(until_idle=True)
    final = books()
    assert (final.stored, final.pending, final.spooled) == (4, 0, 1)
    assert final.dead_lettered == 1
    # the poison entry was never served, so served < accounted by exactly that one
    assert final.unaccounted == -1


def test_an_entry_written_but_not_yet_acknowledged_counts_once(
    settings: ApiSettings,
    client: TestClient,
    redis_client: redis.Redis,
    worker_settings: WorkerSettings,
    engine: Engine,
) -> None:
    """A worker stores or dead-letters an entry, then acknowledges it: an audit that reads the
    stream in between finds the entry waiting and its rows in the tables, and counts them once.
    (The same overlap, seen from a worker that runs on while the audit counts, had shown a
    drained backlog as rows unaccounted for in `make bench`.)"""
    since = datetime.now(UTC) - timedelta(minutes=1)
    client.post("/predict", json={"instances": [SETOSA, SETOSA]})
    unstorable = PredictionRecord(
        request_id="nul-feature",
        row_index=0,
        model_name="iris",
        model_version="1",
        features={"species": "a\x00b"},  # no PostgreSQL string holds a NUL
        prediction="setosa",
        probabilities=None,
        cached=False,
        latency_ms=1.0,
        served_at=datetime.now(UTC),
    )
    stream, group = worker_settings.ledger_stream, worker_settings.ledger_group
    redis_client.xadd(stream, encode_entry([unstorable]))  # type: ignore[arg-type]
    redis_client.xgroup_create(stream, group, id="0")
    delivered: Any = redis_client.xreadgroup(group, "worker-1", {stream: ">"}, count=10)
    entries = [StreamEntry(entry_id.decode(), fields, 1) for entry_id, fields in delivered[0][1]]
    result = LedgerWriter(engine, max_deliveries=1).store(entries)
    assert (len(result.stored), len(result.dead_lettered)) == (1, 1)

    books = audit(settings, redis_client, engine, since, datetime.now(UTC))

    assert (books.served, books.stored, books.pending, books.dead_lettered) == (2, 2, 0, 1)
    assert books.unaccounted == -1  # the hand-made entry was never served


def test_cli_prints_the_books(
    settings: ApiSettings,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client.post("/predict", json={"features": SETOSA})
    for key, value in {
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_USER": settings.postgres_user,
        "POSTGRES_PASSWORD": settings.postgres_password.get_secret_value(),
        "POSTGRES_DB": settings.postgres_db,
        "REDIS_HOST": settings.redis_host,
        "REDIS_PASSWORD": settings.redis_password.get_secret_value(),
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "SPOOL_DIR": str(settings.spool_dir),
    }.items():
        monkeypatch.setenv(key, value)
    # nothing stored yet: the row is pending, the books balance
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "the books balance" in out
    assert "pending (stream, not yet stored)" in out
    # feedback has books of its own, printed after the predictions'
    assert "feedback audit" in out
    assert "duplicates (feedback_duplicates)" in out
    assert main(["--json"]) == 0
    assert '"feedback": {"since"' in capsys.readouterr().out


def test_cli_says_when_a_source_is_unreachable(
    settings: ApiSettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_PASSWORD": settings.postgres_password.get_secret_value(),
        "REDIS_HOST": settings.redis_host,
        "REDIS_PORT": "1",
        "REDIS_PASSWORD": settings.redis_password.get_secret_value(),
        "SPOOL_DIR": str(settings.spool_dir),
    }.items():
        monkeypatch.setenv(key, value)
    assert main([]) == 2
    assert "cannot read the ledger" in capsys.readouterr().err
