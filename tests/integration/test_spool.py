"""Redis down: predictions go on, their records wait in the spool and reach the ledger later."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from berth_api.app import create_app
from berth_api.ledger.spool import LedgerSpool
from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter

SETOSA = [5.1, 3.5, 1.4, 0.2]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_spooled_while_redis_is_down_then_replayed_in_order_and_stored_once(
    settings: ApiSettings,
    redis_client: redis.Redis,
    worker_settings: WorkerSettings,
    engine: Engine,
) -> None:
    down = settings.model_copy(update={"redis_port": 1})  # nothing listens there
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        for i in range(5):
            response = client.post(
                "/predict", json={"features": SETOSA}, headers={"X-Request-ID": f"spool-{i}"}
            )
            assert response.status_code == 200
            assert response.json()["predictions"][0]["label"] == "setosa"
        ready = client.get("/readyz")
        assert ready.status_code == 200  # degraded, still serving
        assert ready.json()["status"] == "degraded"
        assert ready.json()["checks"]["redis"]["ok"] is False
        assert ready.json()["checks"]["spool"]["detail"] == "5 entries waiting for Redis"
    assert not redis_client.exists(settings.ledger_stream)
    assert LedgerSpool(settings.spool_dir).count_entries() == 5

    # Redis is back: the next API start (any process) replays the spool into the stream
    with TestClient(create_app(settings), raise_server_exceptions=False):
        wait_for(lambda: redis_client.xlen(settings.ledger_stream) == 5)
    entries = redis_client.xrange(settings.ledger_stream)
    ids = [decode_entry(fields)[0].request_id for _, fields in entries]
    assert ids == [f"spool-{i}" for i in range(5)]
    assert LedgerSpool(settings.spool_dir).count_entries() == 0
    [record] = decode_entry(entries[0][1])
    key, field = settings.keys.served(record.served_at)
    assert int(redis_client.hget(key, field)) == 5

    # replaying twice (a crash between XADD and deleting the segment) stores nothing twice
    for _, fields in entries[:2]:
        redis_client.xadd(settings.ledger_stream, fields)
    LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=3)).run(
        until_idle=True
    )
    with engine.connect() as connection:
        stored = (
            connection.execute(text("SELECT request_id FROM predictions ORDER BY request_id"))
            .scalars()
            .all()
        )
    assert stored == [f"spool-{i}" for i in range(5)]


def test_replay_happens_while_the_api_keeps_running(
    settings: ApiSettings, redis_client: redis.Redis
) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200  # started
        # an entry spooled by a process that died, found by this one's replay loop
        orphan = settings.spool_dir / "00000000000000000001-dead-1.jsonl"
        fields = redis_client  # placeholder to keep line short
        del fields
        orphan.write_text('{"v": "1", "records": "[]"}\n')
        wait_for(lambda: not orphan.exists())
        assert redis_client.xlen(settings.ledger_stream) == 1


def test_refused_when_neither_redis_nor_the_spool_can_keep_the_record(
    settings: ApiSettings, redis_client: redis.Redis
) -> None:
    down = settings.model_copy(update={"redis_port": 1})
    with TestClient(create_app(down), raise_server_exceptions=False) as client:
        shutil.rmtree(down.spool_dir)
        down.spool_dir.write_text("not a directory")
        response = client.post("/predict", json={"features": SETOSA})
        assert response.status_code == 503
        assert "could not be recorded" in response.json()["detail"]
        assert "it was not served" in response.json()["detail"]
