"""The plain-ASGI router serves every declared prediction endpoint: answers, errors, keys and
the access log, whatever JSON media type the client names."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from berth_api.app import create_app
from berth_common.settings import ApiSettings

PLUS_JSON = {"Content-Type": "application/vnd.example+json"}
JSON = {"Content-Type": "application/json"}
ROW = [5.1, 3.5, 1.4, 0.2]
V2_BODY: dict[str, Any] = {
    "inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64", "data": ROW}]
}


def without_ids(document: dict[str, Any]) -> dict[str, Any]:
    """The answer without what differs per request: its id (and V2's copy in parameters)."""
    kept = {k: v for k, v in document.items() if k not in ("request_id", "id")}
    if isinstance(kept.get("parameters"), dict):
        kept["parameters"] = {k: v for k, v in kept["parameters"].items() if k != "request_id"}
    return kept


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", {"features": ROW}),
        (
            "/predict",
            {
                "instances": [
                    ROW,
                    {
                        "sepal_length": 6.7,
                        "sepal_width": 3.0,
                        "petal_length": 5.2,
                        "petal_width": 2.3,
                    },
                ]
            },
        ),
        ("/v1/models/iris/predict", {"instances": [ROW]}),
        ("/v1/models/iris/versions/1/predict", {"instances": [ROW]}),
        # errors raised by the service: same problem document from either path
        ("/predict", {"features": [5.1, "x", 1.4, 0.2]}),
        ("/predict", {"instances": [[1e308, 3.5, 1.4], ROW]}),
        ("/predict", {"instances": []}),
        ("/v1/models/nope/predict", {"instances": [ROW]}),
        ("/v1/models/iris/versions/9/predict", {"instances": [ROW]}),
        # Open Inference Protocol V2, JSON tensors
        ("/v2/models/iris/infer", V2_BODY),
        ("/v2/models/iris/versions/1/infer", {**V2_BODY, "id": "client-7"}),
        ("/v2/models/iris/infer", {**V2_BODY, "outputs": [{"name": "label"}]}),
        ("/v2/models/iris/infer", {"inputs": [{**V2_BODY["inputs"][0], "shape": [1, 3]}]}),
        ("/v2/models/iris/infer", {"inputs": []}),
        ("/v2/models/nope/infer", V2_BODY),
    ],
)
def test_any_json_media_type_gets_the_same_answer(client: TestClient, path: str, body: Any) -> None:
    client.post(path, json=body, headers=JSON)  # fills the cache: both answers are hits
    via_plus_json = client.post(path, json=body, headers=PLUS_JSON)
    via_json = client.post(path, json=body, headers=JSON)
    assert via_json.status_code == via_plus_json.status_code
    assert via_json.headers["content-type"] == via_plus_json.headers["content-type"]
    assert without_ids(via_json.json()) == without_ids(via_plus_json.json())
    document = via_json.json()
    parameters = document.get("parameters") or {}
    ids = (document.get("request_id"), document.get("id"), parameters.get("request_id"))
    assert via_json.headers["x-request-id"] in ids
    if "id" in body:  # a V2 client's own id is echoed by both
        assert document["id"] == via_plus_json.json()["id"] == body["id"]


@pytest.mark.parametrize(
    ("path", "raw", "status", "field"),
    [
        ("/predict", b'{"features": [5.1, 3.5, 1.4, 0.2], "extra": 1}', 422, "extra"),
        ("/v1/models/iris/predict", b'{"features": [5.1, 3.5, 1.4, 0.2]}', 422, "instances"),
        ("/predict", b'{"instances": [5.1]}', 422, "instances[0]"),
        ("/predict", b"[5.1, 3.5]", 422, None),
        ("/predict", b'{"features": [5.1, 3.5,', 400, None),
    ],
)
def test_other_bodies_get_errors_that_name_the_field(
    client: TestClient, path: str, raw: bytes, status: int, field: str | None
) -> None:
    response = client.post(path, content=raw, headers=JSON)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    if field is not None:
        fields = [e["field"] for e in response.json()["errors"]]
        assert any(name == field or name.startswith(f"{field}.") for name in fields)


def test_the_router_checks_api_keys(settings: ApiSettings, redis_client: redis.Redis) -> None:
    keyed = settings.model_copy(update={"api_keys": SecretStr("secret-key-one")})
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        refused = client.post("/predict", json={"features": ROW}, headers=JSON)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        allowed = client.post(
            "/predict",
            json={"features": ROW},
            headers={**JSON, "Authorization": "Bearer secret-key-one"},
        )
        assert allowed.status_code == 200


@pytest.mark.parametrize(("mode", "logged"), [("all", [200, 422]), ("errors", [422]), ("off", [])])
def test_access_log_modes(
    settings: ApiSettings,
    redis_client: redis.Redis,
    mode: str,
    logged: list[int],
) -> None:
    app = create_app(settings.model_copy(update={"access_log": mode}))
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    access = logging.getLogger("berth.access")
    access.addHandler(handler)
    try:
        with TestClient(app) as client:
            assert client.post("/predict", json={"features": ROW}).status_code == 200
            assert client.post("/predict", json={"features": [1]}).status_code == 422
    finally:
        access.removeHandler(handler)
    assert [int(line.split()[2]) for line in lines] == logged
