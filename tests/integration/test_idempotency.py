"""X-Request-ID is an idempotency key: a retry is answered as the first request was and recorded
once; the id reused for another request is refused with a 409 and nothing is recorded for it;
this holds for concurrent requests and across API processes sharing one Redis."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from berth_api.app import create_app
from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings
from tests.integration.conftest import serving

ROW = [5.1, 3.5, 1.4, 0.2]
OTHER = [6.7, 3.0, 5.2, 2.3]
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}


def recorded(client: redis.Redis, settings: ApiSettings, request_id: str) -> list[Any]:
    return [
        record
        for _, fields in client.xrange(settings.ledger_stream)
        for record in decode_entry(fields)
        if record.request_id == request_id
    ]


def named(request_id: str) -> dict[str, str]:
    return {"X-Request-ID": request_id}


def test_a_retry_is_answered_as_the_first_was_and_recorded_once(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    first = client.post("/predict", json={"instances": [ROW, OTHER]}, headers=named("order-1"))
    assert first.status_code == 200
    # the same request spelled another way: objects instead of lists, 5 instead of 5.0
    as_objects = [
        dict(zip(["sepal_length", "sepal_width", "petal_length", "petal_width"], r, strict=True))
        for r in (ROW, OTHER)
    ]
    retry = client.post(
        "/v1/models/iris/predict", json={"instances": as_objects}, headers=named("order-1")
    )
    assert retry.status_code == 200
    assert retry.json() == first.json()  # the first answer, cached flags and all
    assert [r.cached for r in recorded(redis_client, settings, "order-1")] == [False, False]
    assert len(recorded(redis_client, settings, "order-1")) == 2


def test_a_retry_through_another_door_gets_the_first_answer(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    first = client.post("/predict", json={"features": ROW}, headers=named("door-1"))
    v2 = client.post("/v2/models/iris/infer", json=V2_BODY, headers=named("door-1"))
    v1 = client.post("/v1/models/iris:predict", json={"instances": [ROW]}, headers=named("door-1"))
    assert v2.status_code == v1.status_code == 200
    label = first.json()["predictions"][0]["label"]
    assert v2.json()["outputs"][0]["data"] == [label]
    assert v1.json() == {"predictions": [label]}
    assert len(recorded(redis_client, settings, "door-1")) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", {"features": OTHER}),  # other rows
        ("/predict", {"instances": [ROW, ROW]}),  # more rows
        (
            "/v1/models/churn/predict",
            {
                "instances": [
                    {"tenure_months": 3, "monthly_spend": 8.0, "plan": "basic", "region": "eu"}
                ]
            },
        ),  # another model
        ("/v1/models/iris/versions/2/predict", {"instances": [ROW]}),  # another version
    ],
    ids=["rows", "row-count", "model", "version"],
)
def test_the_id_of_another_request_is_refused_and_nothing_is_recorded(
    redis_client: redis.Redis,
    settings: ApiSettings,
    churn_models_dir: Path,
    path: str,
    body: dict[str, Any],
) -> None:
    import shutil

    shutil.copytree(churn_models_dir / "iris" / "1", churn_models_dir / "iris" / "2")
    metadata = (churn_models_dir / "iris" / "2" / "metadata.json").read_text()
    (churn_models_dir / "iris" / "2" / "metadata.json").write_text(
        metadata.replace('"version": "1"', '"version": "2"')
    )
    served = settings.model_copy(
        update={"models_dir": churn_models_dir, "model_versions": "iris=1"}
    )
    with TestClient(create_app(served), raise_server_exceptions=False) as client:
        first = client.post("/predict", json={"features": ROW}, headers=named("reused"))
        assert first.status_code == 200
        second = client.post(path, json=body, headers=named("reused"))
        assert second.status_code == 409, second.text
        problem = second.json()
        assert problem["type"] == "urn:berth:problem:request-id-conflict"
        assert "already used for a different request" in problem["detail"]
        assert problem["request_id"] == "reused"
        # the first request is still answered as it was
        again = client.post("/predict", json={"features": ROW}, headers=named("reused"))
        assert again.json() == first.json()
    records = recorded(redis_client, settings, "reused")
    assert [(r.model_name, r.model_version, r.row_index) for r in records] == [("iris", "1", 0)]


def test_ids_the_api_makes_up_are_never_checked(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    for _ in range(3):
        assert client.post("/predict", json={"features": ROW}).status_code == 200
    assert not list(redis_client.scan_iter(match=f"{settings.redis_key_prefix}:idempotency:*"))
    records = [r for _, f in redis_client.xrange(settings.ledger_stream) for r in decode_entry(f)]
    assert len(records) == 3
    assert all(r.request_hash is None for r in records)


def test_a_request_the_model_refuses_gives_its_id_back(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    # 1e300 passes the row check but the float32 forest cannot take it: a 422 from the model
    refused = client.post(
        "/predict", json={"features": [1e300, 3.5, 1.4, 0.2]}, headers=named("retry-me")
    )
    assert refused.status_code == 422
    # the id was not used up by a request that was not answered: another request may have it
    fixed = client.post("/predict", json={"features": ROW}, headers=named("retry-me"))
    assert fixed.status_code == 200
    assert len(recorded(redis_client, settings, "retry-me")) == 1


async def _send_all(
    addresses: list[str], bodies: list[dict[str, Any]], request_id: str
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=20) as session:
        return await asyncio.gather(
            *(
                session.post(
                    f"http://{addresses[i % len(addresses)]}/predict",
                    json=body,
                    headers=named(request_id),
                )
                for i, body in enumerate(bodies)
            )
        )


@pytest.fixture
def two_processes(settings: ApiSettings) -> Iterator[list[str]]:
    """Two API servers, each with its own event loop, gateway and batching, sharing one Redis:
    what two API processes or replicas are to each other."""
    with serving(settings) as first, serving(settings) as second:
        yield [first, second]


def test_concurrent_retries_across_processes_are_answered_alike_and_recorded_once(
    two_processes: list[str], redis_client: redis.Redis, settings: ApiSettings
) -> None:
    responses = asyncio.run(_send_all(two_processes, [{"instances": [ROW, OTHER]}] * 40, "same-1"))
    assert Counter(r.status_code for r in responses) == {200: 40}
    assert len({r.text for r in responses}) == 1
    assert len(recorded(redis_client, settings, "same-1")) == 2


def test_concurrent_different_requests_with_one_id_get_one_answer(
    two_processes: list[str], redis_client: redis.Redis, settings: ApiSettings
) -> None:
    bodies = [{"features": [5.0 + i / 100, 3.5, 1.4, 0.2]} for i in range(30)]
    responses = asyncio.run(_send_all(two_processes, bodies, "contested"))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 409: 29}
    [winner] = [bodies[i] for i, r in enumerate(responses) if r.status_code == 200]
    [record] = recorded(redis_client, settings, "contested")
    assert record.features["sepal_length"] == winner["features"][0]
