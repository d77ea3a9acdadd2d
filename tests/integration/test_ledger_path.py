"""The whole ledger path in one process: API -> Redis stream -> worker -> PostgreSQL -> API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from berth_common.settings import ApiSettings, WorkerSettings
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
    caching_client: TestClient, drain: Callable[[], int], engine: Engine
) -> None:
    for request_id in ("hit-a", "hit-b"):
        caching_client.post(
            "/predict", json={"features": SETOSA}, headers={"X-Request-ID": request_id}
        )
    drain()
    with engine.connect() as connection:
        result = connection.execute(text("SELECT request_id, cached FROM predictions"))
        rows = {row.request_id: row.cached for row in result}
    assert rows == {"hit-a": False, "hit-b": True}


def test_concurrent_requests_sharing_round_trips_each_get_their_own_record(
    live_api: str,
    drain: Callable[[], int],
    engine: Engine,
    redis_client: redis.Redis,
    settings: ApiSettings,
) -> None:
    """Requests that share a model call and a Redis pipeline (reads of some, ledger entries of
    others) must each get their own answer, record, cache entry and count."""
    rows = [[4.4 + i / 50, 2.9 + (i % 7) / 10, 1.3 + i / 40, 0.2 + (i % 5) / 10] for i in range(80)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://{live_api}", timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post(
                        "/predict",
                        json={"features": row},
                        headers={"X-Request-ID": f"{round_}-{i}"},
                    )
                    for round_ in ("cold", "warm")
                    for i, row in enumerate(rows)
                )
            )

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * 160
    answers = {r.json()["request_id"]: r.json()["predictions"][0] for r in responses}
    assert drain() == 160
    with engine.connect() as connection:
        stored = {
            row.request_id: row
            for row in connection.execute(
                text(
                    "SELECT request_id, features, prediction, probabilities, cached "
                    "FROM predictions"
                )
            )
        }
    assert stored.keys() == answers.keys()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    for request_id, answer in answers.items():
        record = stored[request_id]
        assert record.features == dict(zip(names, rows[int(request_id.split("-")[1])], strict=True))
        assert (record.prediction, record.probabilities, record.cached) == (
            answer["label"],
            answer["probabilities"],
            answer["cached"],
        )
    # each row was answered the same whether it came from the model or from the cache
    for i in range(80):
        cold, warm = answers[f"cold-{i}"], answers[f"warm-{i}"]
        assert (cold["label"], cold["probabilities"]) == (warm["label"], warm["probabilities"])
    counters = redis_client.hgetall(
        f"{settings.redis_key_prefix}:served:{datetime.now(UTC):%Y-%m-%d}"
    )
    assert sum(int(v) for v in counters.values()) == 160
