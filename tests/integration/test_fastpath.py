"""The plain-ASGI shortcut for the prediction routes answers exactly as the FastAPI routes do.

A `+json` content type is JSON to FastAPI but not one the shortcut takes, so the same body can be
sent down both paths and the answers compared.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from berth_api.app import create_app
from berth_common.settings import ApiSettings

ROUTE = {"Content-Type": "application/merge-patch+json"}
SHORTCUT = {"Content-Type": "application/json"}
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
def test_both_paths_give_the_same_answer(client: TestClient, path: str, body: Any) -> None:
    client.post(path, json=body, headers=SHORTCUT)  # fills the cache: both answers are hits
    via_route = client.post(path, json=body, headers=ROUTE)
    via_shortcut = client.post(path, json=body, headers=SHORTCUT)
    assert via_shortcut.status_code == via_route.status_code
    assert via_shortcut.headers["content-type"] == via_route.headers["content-type"]
    assert without_ids(via_shortcut.json()) == without_ids(via_route.json())
    document = via_shortcut.json()
    parameters = document.get("parameters") or {}
    ids = (document.get("request_id"), document.get("id"), parameters.get("request_id"))
    assert via_shortcut.headers["x-request-id"] in ids
    if "id" in body:  # a V2 client's own id is echoed by both
        assert document["id"] == via_route.json()["id"] == body["id"]


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
def test_other_bodies_get_the_routes_own_errors(
    client: TestClient, path: str, raw: bytes, status: int, field: str | None
) -> None:
    response = client.post(path, content=raw, headers=SHORTCUT)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    if field is not None:
        fields = [e["field"] for e in response.json()["errors"]]
        assert any(name == field or name.startswith(f"{field}.") for name in fields)


def test_the_shortcut_checks_api_keys(settings: ApiSettings, redis_client: redis.Redis) -> None:
    keyed = settings.model_copy(update={"api_keys": SecretStr("secret-key-one")})
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        refused = client.post("/predict", json={"features": ROW}, headers=SHORTCUT)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        allowed = client.post(
            "/predict",
            json={"features": ROW},
            headers={**SHORTCUT, "Authorization": "Bearer secret-key-one"},
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
