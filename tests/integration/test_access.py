"""One access policy for every path and transport: what needs a key, what answers anyone, and
what a caller without a key can learn."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from berth_api.app import create_app
from berth_api.http.endpoints import PREDICTION_ENDPOINTS, PUBLIC_PATHS
from berth_common.settings import ApiSettings
from tests.integration.conftest import serving

KEY = "key-number-one"
ROW = [5.1, 3.5, 1.4, 0.2]
BEARER = {"Authorization": f"Bearer {KEY}"}
# a request for every declared prediction endpoint, and for the other data endpoints
GUARDED = [
    ("POST", endpoint.path.replace("{name}", "iris").replace("{version}", "1"))
    for endpoint in PREDICTION_ENDPOINTS
] + [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/iris"),
    ("GET", "/v1/models/iris/versions/1"),
    ("GET", "/v1/predictions/x"),
    ("GET", "/v2/models/iris"),
    ("GET", "/v2/models/iris/ready"),
    ("GET", "/nowhere"),  # unknown paths too: nothing is learnt without a key
    ("DELETE", "/predict"),
]


@pytest.fixture
def keyed(settings: ApiSettings) -> ApiSettings:
    return settings.model_copy(update={"api_keys": SecretStr(f"{KEY}, key-number-two")})


@pytest.fixture
def guarded(keyed: ApiSettings, redis_client: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(("method", "path"), GUARDED)
def test_every_data_path_needs_a_key(guarded: TestClient, method: str, path: str) -> None:
    response = guarded.request(method, path, json={"features": ROW})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["type"] == "urn:berth:problem:unauthorized"
    wrong = guarded.request(
        method, path, json={"features": ROW}, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize(("method", "path"), GUARDED[: len(PREDICTION_ENDPOINTS)])
def test_two_authorization_headers_are_refused_by_every_transport(
    keyed: ApiSettings, method: str, path: str
) -> None:
    # one valid and one invalid key: whichever a proxy or framework reads, refuse to guess
    with serving(keyed) as address, httpx.Client() as session:
        request = httpx.Request(
            method,
            f"http://{address}{path}",
            json={"features": ROW},
            headers=[("Authorization", f"Bearer {KEY}"), ("Authorization", "Bearer nope")],
        )
        response = session.send(request)
    assert response.status_code == 400
    assert "one Authorization header" in response.json()["detail"]


def test_a_key_opens_the_data_paths(guarded: TestClient) -> None:
    assert guarded.post("/predict", json={"features": ROW}, headers=BEARER).status_code == 200
    lower = {"Authorization": "bearer key-number-two"}
    assert guarded.get("/v1/models", headers=lower).status_code == 200


def test_public_paths_answer_anyone(guarded: TestClient) -> None:
    for path in sorted(PUBLIC_PATHS - {"/docs/oauth2-redirect"}):
        response = guarded.get(path)
        assert response.status_code == 200, (path, response.text)


def test_readiness_without_a_key_names_its_checks_but_not_their_details(
    guarded: TestClient,
) -> None:
    anonymous = guarded.get("/readyz").json()
    assert anonymous["status"] in ("ready", "degraded")
    assert set(anonymous["checks"]) >= {"model", "redis", "spool", "database"}
    assert all(set(check) == {"ok"} for check in anonymous["checks"].values())
    detailed = guarded.get("/readyz", headers=BEARER).json()
    assert detailed["checks"]["model"] == {"ok": True, "detail": "iris/1 loaded"}
    assert "reachable" in detailed["checks"]["database"]["detail"]


def test_the_catalogue_in_the_openapi_document_is_for_key_holders(guarded: TestClient) -> None:
    anonymous = guarded.get("/openapi.json").json()
    detailed = guarded.get("/openapi.json", headers=BEARER).json()
    assert "/v1/models/iris/predict" not in anonymous["paths"]
    assert "sepal_length" not in str(anonymous["paths"].get("/v1/models/{name}/predict"))
    assert "/v1/models/iris/predict" in detailed["paths"]
    assert "sepal_length" in str(detailed["paths"]["/v1/models/iris/predict"])


def test_without_keys_everything_is_open_and_detailed(client: TestClient) -> None:
    assert client.get("/readyz").json()["checks"]["model"]["detail"] == "iris/1 loaded"
    assert "/v1/models/iris/predict" in client.get("/openapi.json").json()["paths"]


def test_every_declared_endpoint_is_documented_and_served(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for endpoint in PREDICTION_ENDPOINTS:
        operation = document["paths"][endpoint.path]["post"]
        assert operation["operationId"] == endpoint.operation
        assert [p["name"] for p in operation.get("parameters", [])] == endpoint.parameters
        assert operation["requestBody"]["content"]
        path = endpoint.path.replace("{name}", "iris").replace("{version}", "1")
        # (GET /v1/models/{name} takes "iris:predict" for a model name, which has no model)
        expected = (404, 405) if ":" in path else (405,)
        assert client.get(path).status_code in expected, path
