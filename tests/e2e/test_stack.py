"""The whole stack, from the outside: HTTP in, rows in PostgreSQL out, across restarts."""

from __future__ import annotations

import math
import uuid
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, text

from berth_api.serving.cache import cache_key
from berth_common.settings import CommonSettings
from tests.e2e.stack import Compose, wait_ready, wait_until

TUTORIAL_BODY = {"features": [5.1, 3.5, 1.4, 0.2]}
TUTORIAL_FEATURES = {
    "sepal_length": 5.1,
    "sepal_width": 3.5,
    "petal_length": 1.4,
    "petal_width": 0.2,
}
IRIS_CLASSES = {"setosa", "versicolor", "virginica"}
# From the API's answer to the row being in PostgreSQL: one stream read plus one insert, normally
# well under a second.
STORED_TIMEOUT_SECONDS = 15.0
# After a restart the worker first has to come up again before it reads the stream.
STORED_AFTER_RESTART_TIMEOUT_SECONDS = 90.0


def new_request_id() -> str:
    return f"e2e-{uuid.uuid4().hex}"


def predict(api: httpx.Client, body: object, request_id: str) -> dict[str, Any]:
    response = api.post("/predict", json=body, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id
    payload: dict[str, Any] = response.json()
    return payload


def stored_rows(db: Engine, request_id: str) -> list[dict[str, Any]]:
    with db.connect() as connection:
        result = connection.execute(
            text(
                "SELECT row_index, model_name, model_version, features, prediction, probabilities"
                " FROM predictions WHERE request_id = :id ORDER BY row_index"
            ),
            {"id": request_id},
        )
        return [dict(row._mapping) for row in result]


def wait_stored(db: Engine, request_id: str, *, rows: int, timeout: float) -> list[dict[str, Any]]:
    return wait_until(
        lambda: found if len(found := stored_rows(db, request_id)) >= rows else None,
        what=f"{rows} row(s) of request {request_id} in the predictions table",
        timeout=timeout,
    )


def ledger_drained(client: redis.Redis, settings: CommonSettings) -> bool:
    """Whether the worker has read and acknowledged every entry appended to the ledger stream."""
    stream: dict[str, Any] = client.xinfo_stream(settings.ledger_stream)
    groups: list[dict[str, Any]] = client.xinfo_groups(settings.ledger_stream)
    names = {settings.ledger_group, settings.ledger_group.encode()}
    group = next((g for g in groups if g["name"] in names), None)
    return (
        group is not None
        and group["pending"] == 0
        and group["last-delivered-id"] == stream["last-generated-id"]
    )


def test_predict_tutorial_body(api: httpx.Client) -> None:
    request_id = new_request_id()

    body = predict(api, TUTORIAL_BODY, request_id)

    assert body["request_id"] == request_id
    assert body["model"] == {"name": "iris", "version": "1"}
    [row] = body["predictions"]
    assert row["label"] == "setosa"
    probabilities = row["probabilities"]
    assert set(probabilities) == IRIS_CLASSES
    assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6)
    assert max(probabilities, key=probabilities.get) == "setosa"
    assert isinstance(row["cached"], bool)


def test_the_demo_bundle_carries_its_verified_onnx_form(api: httpx.Client) -> None:
    """seed-model trains iris/1 with its compiled form, which the api then serves."""
    response = api.get("/v1/models/iris")
    assert response.status_code == 200
    compiled = response.json()["compiled"]
    assert compiled["format"] == "onnx"
    assert compiled["input_type"] == "float32"
    assert compiled["max_abs_diff"] <= compiled["tolerance"] == 1e-5
    assert compiled["verified_rows"] > 150


def test_prediction_is_stored_and_readable(api: httpx.Client, stack_db: Engine) -> None:
    request_id = new_request_id()
    predict(api, TUTORIAL_BODY, request_id)

    [row] = wait_stored(stack_db, request_id, rows=1, timeout=STORED_TIMEOUT_SECONDS)
    assert row["row_index"] == 0
    assert (row["model_name"], row["model_version"]) == ("iris", "1")
    assert row["prediction"] == "setosa"
    assert row["features"] == TUTORIAL_FEATURES  # keyed by feature name (JSONB keeps no order)
    assert set(row["probabilities"]) == IRIS_CLASSES

    response = api.get(f"/v1/predictions/{request_id}")
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["request_id"] == request_id
    [served] = stored["rows"]
    assert served["row_index"] == 0
    assert served["model"] == {"name": "iris", "version": "1"}
    assert served["prediction"] == "setosa"


def appended_to_aof(compose: Compose, text: str) -> int:
    """How often `text` occurs in what Redis appended to its append-only file since its last
    rewrite (the incremental files)."""
    found = compose(
        "exec", "-T", "redis", "sh", "-c",
        'cat /data/appendonlydir/*.incr.aof | grep -a -c -F -e "$1" || true', "sh", text,
    )  # fmt: skip
    return int(found.stdout.strip() or 0)


def test_the_append_only_file_keeps_the_ledger_not_the_cache(
    api: httpx.Client,
    stack_redis: redis.Redis,
    stack_settings: CommonSettings,
    compose: Compose,
) -> None:
    # `make test` sets CACHE_MIN_ROW_US=0: by default the compiled demo model is not cached
    serving = api.get("/v1/models/iris").json()["serving"]
    assert serving["cache"] is True, serving["cache_reason"]
    request_id = new_request_id()
    row = [5.1, 3.5, 1.4, 0.2 + uuid.uuid4().int % 10_000 / 1e6]  # a row never cached before
    predict(api, {"features": row}, request_id)
    key = cache_key(stack_settings.keys, "iris", "1", row)

    # the ledger entry holding the request is in the file: Redis appends before it replies
    assert appended_to_aof(compose, request_id) >= 1
    # the row's answer is cached, and the cache write was kept out of the file
    assert stack_redis.ttl(key) > 0
    assert appended_to_aof(compose, key) == 0


def test_unknown_request_id_is_404_problem(api: httpx.Client) -> None:
    response = api.get(f"/v1/predictions/{new_request_id()}")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


def test_same_request_id_twice_stores_each_row_once(
    api: httpx.Client,
    stack_db: Engine,
    stack_redis: redis.Redis,
    stack_settings: CommonSettings,
) -> None:
    request_id = new_request_id()
    body = {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}

    first = predict(api, body, request_id)
    second = predict(api, body, request_id)

    assert [p["label"] for p in first["predictions"]] == ["setosa", "virginica"]
    assert [p["label"] for p in second["predictions"]] == ["setosa", "virginica"]
    wait_stored(stack_db, request_id, rows=2, timeout=STORED_TIMEOUT_SECONDS)
    # Both entries are on the stream; only once the worker has taken in the second one does the
    # count below say anything about duplicates.
    wait_until(
        lambda: ledger_drained(stack_redis, stack_settings),
        what="the worker to acknowledge every ledger entry",
        timeout=STORED_TIMEOUT_SECONDS,
    )
    with stack_db.connect() as connection:
        counts: dict[int, int] = dict(
            connection.execute(
                text(
                    "SELECT row_index, count(*) FROM predictions WHERE request_id = :id"
                    " GROUP BY row_index"
                ),
                {"id": request_id},
            ).all()
        )
    assert counts == {0: 1, 1: 1}


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"features": [1, 2]}', id="too-few-features"),
        pytest.param(b'{"features": [1, 2, 3, 4, 5]}', id="too-many-features"),
        pytest.param(b'{"features": ["a", "b", "c", "d"]}', id="not-numbers"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b'{"features": [5.1, 3.5, 1.4, 0.2], "instances": []}', id="both-forms"),
        pytest.param(b'{"features": [5.1, 3.5', id="not-json"),
    ],
)
def test_bad_input_is_a_4xx_problem(api: httpx.Client, content: bytes) -> None:
    response = api.post("/predict", content=content, headers={"Content-Type": "application/json"})

    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["title"]
    assert problem["detail"]


def test_restart_keeps_rows_and_stores_new_ones(
    api: httpx.Client, stack_db: Engine, compose: Compose
) -> None:
    before = new_request_id()
    predict(api, TUTORIAL_BODY, before)
    wait_stored(stack_db, before, rows=1, timeout=STORED_TIMEOUT_SECONDS)

    compose.restart(["api", "worker"])
    wait_ready(api, timeout=120)

    assert len(stored_rows(stack_db, before)) == 1
    assert api.get(f"/v1/predictions/{before}").status_code == 200
    after = new_request_id()
    predict(api, TUTORIAL_BODY, after)
    wait_stored(stack_db, after, rows=1, timeout=STORED_AFTER_RESTART_TIMEOUT_SECONDS)
