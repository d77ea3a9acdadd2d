"""The whole ledger path in one process: API -> Redis stream -> worker -> PostgreSQL -> API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from berth_common.settings import WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter

SETOSA = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def drain(
    worker_settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> Callable[[], int]:
    """Runs a real consumer until the stream is empty; returns the rows it inserted."""
    consumer = LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=3))

    def run() -> int:
        return consumer.run(until_idle=True).rows

    return run


def test_served_rows_are_stored_and_read_back(
    client: TestClient, drain: Callable[[], int], engine: Engine
) -> None:
    response = client.post(
        "/v1/models/iris/predict",
        json={"instances": [SETOSA, [6.7, 3.0, 5.2, 2.3]]},
        headers={"X-Request-ID": "path-1"},
    )
    assert response.status_code == 200
    assert client.get("/v1/predictions/path-1").status_code == 404

    assert drain() == 2

    stored = client.get("/v1/predictions/path-1")
    assert stored.status_code == 200
    rows = stored.json()["rows"]
    assert [r["row_index"] for r in rows] == [0, 1]
    served = response.json()["predictions"]
    assert [r["prediction"] for r in rows] == [p["label"] for p in served]
    assert [r["probabilities"] for r in rows] == [p["probabilities"] for p in served]
    assert rows[0]["features"] == {
        "sepal_length": 5.1,
        "sepal_width": 3.5,
        "petal_length": 1.4,
        "petal_width": 0.2,
    }
    assert rows[0]["model"] == {"name": "iris", "version": "1"}
    assert rows[0]["stored_at"] >= rows[0]["served_at"]

    with engine.connect() as connection:
        label = connection.execute(
            text(
                "SELECT prediction #>> '{}' FROM predictions WHERE request_id = 'path-1' "
                "AND row_index = 0"
            )
        ).scalar_one()
    assert label == "setosa"


def test_same_request_id_twice_stores_one_row(
    client: TestClient, drain: Callable[[], int], engine: Engine
) -> None:
    for _ in range(2):
        response = client.post(
            "/predict", json={"features": SETOSA}, headers={"X-Request-ID": "dup-7"}
        )
        assert response.status_code == 200
    drain()
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT row_index, cached FROM predictions WHERE request_id = 'dup-7'")
        ).all()
    # the first serving is the one on record
    assert [tuple(r) for r in rows] == [(0, False)]


def test_cache_hits_are_recorded_as_such(
    client: TestClient, drain: Callable[[], int], engine: Engine
) -> None:
    for request_id in ("hit-a", "hit-b"):
        client.post("/predict", json={"features": SETOSA}, headers={"X-Request-ID": request_id})
    drain()
    with engine.connect() as connection:
        result = connection.execute(text("SELECT request_id, cached FROM predictions"))
        rows = {row.request_id: row.cached for row in result}
    assert rows == {"hit-a": False, "hit-b": True}
