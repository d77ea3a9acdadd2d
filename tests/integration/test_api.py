"""The API against the real Redis and PostgreSQL: what is answered, cached and queued."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from berth_api.app import create_app
from berth_api.serving.features import Value
from berth_api.serving.predictor import ModelOutput, Predicts
from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def ledger_entries(redis_client: redis.Redis, settings: ApiSettings) -> list[Any]:
    entries = redis_client.xrange(settings.ledger_stream)
    return [record for _, fields in entries for record in decode_entry(fields)]


def test_tutorial_body_predicts_a_label(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    response = client.post("/predict", json={"features": SETOSA})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == {"name": "iris", "version": "1"}
    assert body["request_id"] == response.headers["x-request-id"]
    [row] = body["predictions"]
    assert row["label"] == "setosa"
    assert set(row["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert row["probabilities"]["setosa"] > 0.9
    assert row["cached"] is False

    [record] = ledger_entries(redis_client, settings)
    assert record.request_id == body["request_id"]
    assert record.row_index == 0
    assert (record.model_name, record.model_version) == ("iris", "1")
    assert record.features == dict(
        zip(["sepal_length", "sepal_width", "petal_length", "petal_width"], SETOSA, strict=True)
    )
    assert record.prediction == "setosa"
    assert record.probabilities == row["probabilities"]
    assert record.cached is False
    assert record.latency_ms > 0


def test_batch_mixes_lists_and_objects_and_caches_rows(
    caching_client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    client = caching_client
    first = client.post("/v1/models/iris/predict", json={"instances": [SETOSA, VIRGINICA]})
    assert first.status_code == 200
    assert [r["label"] for r in first.json()["predictions"]] == ["setosa", "virginica"]
    assert [r["cached"] for r in first.json()["predictions"]] == [False, False]

    # the same rows spelled the other way round are cache hits
    as_object = dict(zip(VIRGINICA, [6.7, 3.0, 5.2, 2.3], strict=True))
    second = client.post(
        "/predict", json={"instances": [as_object, [5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5]]}
    )
    assert second.status_code == 200
    assert [r["cached"] for r in second.json()["predictions"]] == [True, True, False]
    assert second.json()["predictions"][0] == {**first.json()["predictions"][1], "cached": True}

    records = ledger_entries(redis_client, settings)
    assert [(r.row_index, r.cached) for r in records] == [
        (0, False),
        (1, False),
        (0, True),
        (1, True),
        (2, False),
    ]
    keys = list(redis_client.scan_iter(match=f"{settings.redis_key_prefix}:cache:iris:1:*"))
    assert len(keys) == 3
    assert 0 < redis_client.ttl(keys[0]) <= settings.cache_ttl_seconds


def test_with_the_cache_off_every_row_is_computed_and_nothing_is_cached(
    settings: ApiSettings, redis_client: redis.Redis
) -> None:
    uncached = settings.model_copy(update={"cache_enabled": False})
    with TestClient(create_app(uncached), raise_server_exceptions=False) as client:
        first = client.post("/predict", json={"instances": [SETOSA, VIRGINICA, SETOSA]})
        again = client.post("/predict", json={"instances": [VIRGINICA]})
        named = {"X-Request-ID": "nightly-7"}
        once = client.post("/predict", json={"instances": [SETOSA]}, headers=named)
        retry = client.post("/predict", json={"instances": [SETOSA]}, headers=named)
        other = client.post("/predict", json={"instances": [VIRGINICA]}, headers=named)
    assert [first.status_code, again.status_code, once.status_code] == [200, 200, 200]
    assert [r["label"] for r in first.json()["predictions"]] == ["setosa", "virginica", "setosa"]
    assert [r["cached"] for r in first.json()["predictions"]] == [False, False, False]
    assert again.json()["predictions"][0] == first.json()["predictions"][1]
    # a named request is still a request once: its retry gets the first answer, another body
    # under its id is refused
    assert retry.status_code == 200
    assert retry.json() == once.json()
    assert other.status_code == 409

    assert list(redis_client.scan_iter(match=f"{settings.redis_key_prefix}:cache:*")) == []
    records = ledger_entries(redis_client, uncached)
    assert [(r.request_id == "nightly-7", r.cached) for r in records] == [
        (False, False),
        (False, False),
        (False, False),
        (False, False),
        (True, False),
    ]


def test_the_compiled_demo_model_is_quicker_than_the_cache_and_is_not_cached(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    serving = client.get("/v1/models/iris").json()["serving"]
    first = client.post("/predict", json={"instances": [SETOSA]})
    again = client.post("/predict", json={"instances": [SETOSA]})

    assert serving["engine"] == "onnxruntime"
    assert serving["cache"] is False
    # one row alone, or (onnxruntime's call costing more than its rows) a full batch per row
    timed = [serving[f] for f in ("row_us", "batched_row_us") if serving[f] is not None]
    assert 0 < min(timed) < settings.cache_min_row_us
    assert "the cache would cost more than it saves" in serving["cache_reason"]
    assert [first.json()["predictions"][0]["cached"], again.json()["predictions"][0]["cached"]] == [
        False,
        False,
    ]
    assert list(redis_client.scan_iter(match=f"{settings.redis_key_prefix}:cache:*")) == []


def test_a_model_is_timed_at_load_whatever_the_cache_settings(caching_client: TestClient) -> None:
    serving = caching_client.get("/v1/models/iris").json()["serving"]

    assert serving["cache"] is True
    assert serving["cache_reason"] == "CACHE_MIN_ROW_US=0 caches every model"
    assert serving["row_us"] > 0
    assert serving["batched_row_us"] > 0


class ThreadNoting:
    """A model that notes the name of the thread each of its calls runs on."""

    def __init__(self, model: Predicts) -> None:
        self.model, self.engine = model, model.engine
        self.threads: list[str] = []

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        self.threads.append(threading.current_thread().name)
        return self.model.predict(rows)


def test_the_compiled_demo_models_calls_run_on_the_event_loop_from_the_first(
    client: TestClient,
) -> None:
    # timed at load, its calls are known to be quick: no request waits for a hand-off to the
    # model's thread (named model-iris/1), not even the first of its size
    batcher = client.app_state["berth"].registry.models[("iris", "1")].batcher  # type: ignore[attr-defined]
    noting = batcher.predictor = ThreadNoting(batcher.predictor)
    one = client.post("/predict", json={"instances": [SETOSA]})
    ten = client.post("/predict", json={"instances": [SETOSA] * 10})

    assert (one.status_code, ten.status_code) == (200, 200)
    assert len(noting.threads) == 2
    assert not any(name.startswith("model-") for name in noting.threads), noting.threads


def test_the_demo_model_in_scikit_learn_is_slower_than_the_cache_and_is_cached(
    settings: ApiSettings, redis_client: redis.Redis
) -> None:
    sklearn = settings.model_copy(update={"compiled_models": False})
    with TestClient(create_app(sklearn), raise_server_exceptions=False) as client:
        serving = client.get("/v1/models/iris/versions/1").json()["serving"]
        first = client.post("/predict", json={"instances": [SETOSA]})
        again = client.post("/predict", json={"instances": [SETOSA]})

    assert serving["engine"] == "scikit-learn"
    assert serving["cache"] is True
    # a forest of 100 trees: milliseconds a call, and still far more than 20 µs a row in a batch
    assert serving["row_us"] > serving["batched_row_us"] > settings.cache_min_row_us
    assert [first.json()["predictions"][0]["cached"], again.json()["predictions"][0]["cached"]] == [
        False,
        True,
    ]
    assert len(list(redis_client.scan_iter(match=f"{settings.redis_key_prefix}:cache:*"))) == 1


def test_specific_version_endpoint(client: TestClient) -> None:
    ok = client.post("/v1/models/iris/versions/1/predict", json={"instances": [SETOSA]})
    assert ok.status_code == 200
    missing = client.post("/v1/models/iris/versions/9/predict", json={"instances": [SETOSA]})
    assert missing.status_code == 404
    assert "no version '9'" in missing.json()["detail"]


def test_client_request_id_is_used_and_echoed(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    response = client.post(
        "/predict", json={"features": SETOSA}, headers={"X-Request-ID": "order-42"}
    )
    assert response.headers["x-request-id"] == "order-42"
    assert response.json()["request_id"] == "order-42"
    assert [r.request_id for r in ledger_entries(redis_client, settings)] == ["order-42"]


def test_unusable_request_id_is_refused(client: TestClient) -> None:
    response = client.post("/predict", json={"features": SETOSA}, headers={"X-Request-ID": "a b"})
    assert response.status_code == 400
    assert response.json()["type"] == "urn:berth:problem:invalid-request-id"


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("/predict", {"features": [1, 2]}, 422, "instances[0]"),
    ("/predict", {"features": [1, 2, 3, "x"]}, 422, "instances[0][3]"),
    ("/predict", {"features": {"sepal_length": 1, "petals": 2}}, 422, "instances[0]"),
    ("/predict", {"instances": []}, 422, "instances"),
    ("/predict", {"instances": [SETOSA] * 6}, 422, "instances"),
    ("/predict", {}, 422, "body"),
    ("/predict", {"features": SETOSA, "instances": [SETOSA]}, 422, "body"),
    ("/predict", {"features": SETOSA, "extra": 1}, 422, "extra"),
    ("/predict", [1, 2], 422, "body"),
    ("/v1/models/iris/predict", {"instances": "nope"}, 422, "instances"),
    ("/v1/models/iris/predict", {"instances": [[1, 2, 3, None]]}, 422, "instances[0][3]"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD_BODIES)
def test_bad_input_is_a_named_4xx(
    settings: ApiSettings, redis_client: redis.Redis, path: str, body: Any, status: int, field: str
) -> None:
    limited = settings.model_copy(update={"max_batch_rows": 5})
    with TestClient(create_app(limited), raise_server_exceptions=False) as client:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert any(e["field"].startswith(field) for e in problem.get("errors", [])), problem
    assert not redis_client.exists(settings.ledger_stream)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"features": [5.1, 3.5,', "not valid JSON"),
        (b'{"features": [5.1, NaN, 1.4, 0.2]}', "sepal_width must be a finite number"),
        (b'{"features": [5.1, Infinity, 1.4, 0.2]}', "sepal_width must be a finite number"),
        (b'{"features": [1e999, 3.5, 1.4, 0.2]}', "sepal_length must be a finite number"),
    ],
)
def test_malformed_and_non_finite_json(client: TestClient, body: bytes, detail: str) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    assert detail in response.json()["detail"]


def test_unknown_model_and_route(client: TestClient) -> None:
    response = client.post("/v1/models/nope/predict", json={"instances": [SETOSA]})
    assert response.status_code == 404
    assert response.json()["type"] == "urn:berth:problem:model-not-found"
    assert client.get("/nowhere").status_code == 404
    assert client.get("/predict").status_code == 405


def test_model_catalogue(client: TestClient) -> None:
    listing = client.get("/v1/models").json()["models"]
    assert [(m["name"], m["version"], m["default"]) for m in listing] == [("iris", "1", True)]
    metadata = client.get("/v1/models/iris").json()
    assert metadata["classes"] == ["setosa", "versicolor", "virginica"]
    assert len(metadata["sha256"]) == 64
    assert "accuracy" in metadata["metrics"]
    assert client.get("/v1/models/nope").status_code == 404


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["model"] == {"ok": True, "detail": "iris/1 loaded"}
    assert ready.json()["checks"]["redis"]["ok"] is True
    assert "/v1/models/{name}/predict" in client.get("/openapi.json").json()["paths"]


def test_tampered_bundle_is_not_served_and_readiness_says_why(settings: ApiSettings) -> None:
    model_file = settings.models_dir / "iris" / "1" / "model.skops"
    model_file.write_bytes(model_file.read_bytes()[:-1])
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["model"]["ok"] is False
        assert "sha256" in ready.json()["checks"]["model"]["detail"]
        response = client.post("/predict", json={"features": SETOSA})
        assert response.status_code == 503
        assert "sha256" in response.json()["detail"]


def test_missing_default_model(settings: ApiSettings, tmp_path: Path) -> None:
    empty = settings.model_copy(update={"models_dir": tmp_path})
    with TestClient(create_app(empty), raise_server_exceptions=False) as client:
        ready = client.get("/readyz").json()
        assert "default model 'iris' has no bundle" in ready["checks"]["model"]["detail"]
        assert client.post("/predict", json={"features": SETOSA}).status_code == 404


def test_unknown_request_id_is_404(client: TestClient) -> None:
    response = client.get("/v1/predictions/never-served")
    assert response.status_code == 404
    assert response.json()["type"] == "urn:berth:problem:prediction-not-found"
    assert client.get("/v1/predictions/bad%20id").status_code == 422


def test_error_bodies_are_problem_details(client: TestClient) -> None:
    body = client.post("/predict", json={"features": [1]}).json()
    assert set(body) >= {"type", "title", "status", "detail", "request_id", "errors"}
    json.dumps(body)


def test_oversized_body_is_a_413_before_parsing(settings: ApiSettings) -> None:
    small = settings.model_copy(update={"max_body_bytes": 200})
    body = json.dumps({"instances": [SETOSA] * 20}).encode()
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        declared = client.post(
            "/predict", content=body, headers={"content-type": "application/json"}
        )
        assert declared.status_code == 413
        assert "larger than 200 bytes" in declared.json()["detail"]
        assert declared.headers["x-request-id"]

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(body), 50):
                yield body[i : i + 50]

        chunked = client.post(
            "/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        assert client.post("/predict", json={"features": SETOSA}).status_code == 200


def test_api_keys_guard_data_endpoints_only(settings: ApiSettings) -> None:
    from pydantic import SecretStr

    guarded = settings.model_copy(update={"api_keys": SecretStr("key-one, key-two")})
    with TestClient(create_app(guarded), raise_server_exceptions=False) as client:
        for method, path in [
            ("POST", "/predict"),
            ("POST", "/v1/models/iris/predict"),
            ("GET", "/v1/models"),
            ("GET", "/v1/models/iris"),
            ("GET", "/v1/predictions/x"),
        ]:
            response = client.request(method, path, json={"features": SETOSA})
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["type"] == "urn:berth:problem:unauthorized"
        wrong = client.post(
            "/predict", json={"features": SETOSA}, headers={"Authorization": "Bearer key-three"}
        )
        assert wrong.status_code == 401
        basic = client.post(
            "/predict", json={"features": SETOSA}, headers={"Authorization": "Basic a2V5"}
        )
        assert basic.status_code == 401
        for key in ("key-one", "key-two"):
            ok = client.post(
                "/predict", json={"features": SETOSA}, headers={"Authorization": f"Bearer {key}"}
            )
            assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
