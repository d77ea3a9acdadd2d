"""Models people bring, packaged and served through every door, several at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from berth_api.app import create_app
from berth_api.bundles.package import package
from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings
from tests.models import churn_pipeline, no_proba_classifier, save, spend_regressor, write_sample

CUSTOMER = {"tenure_months": 3, "monthly_spend": 80.5, "plan": "basic", "region": "eu"}


@pytest.fixture
def settings(api_settings: ApiSettings, iris_models_dir: Path, tmp_path: Path) -> ApiSettings:
    churn = save(churn_pipeline(), tmp_path / "churn.joblib")
    sample = write_sample(tmp_path / "sample.csv")
    for version in ("2", "10"):
        package(churn, iris_models_dir, "churn", version, sample)
    package(save(spend_regressor(), tmp_path / "r.joblib"), iris_models_dir, "spend", "1")
    package(save(no_proba_classifier(), tmp_path / "s.joblib"), iris_models_dir, "svc", "1")
    return api_settings.model_copy(update={"models_dir": iris_models_dir})


def test_all_models_are_served_at_their_highest_version(client: TestClient) -> None:
    listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(listing) == {"iris", "churn", "spend", "svc"}
    assert listing["churn"]["version"] == "10"
    assert listing["churn"]["versions"] == ["2", "10"]
    assert listing["iris"]["default"] is True


def test_mixed_types_through_every_door(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    rest = client.post("/v1/models/churn/predict", json={"instances": [CUSTOMER]})
    assert rest.status_code == 200, rest.text
    [row] = rest.json()["predictions"]
    assert row["label"] == "churn"
    assert set(row["probabilities"]) == {"churn", "stay"}
    assert rest.json()["model"] == {"name": "churn", "version": "10"}

    v2 = client.post(
        "/v2/models/churn/versions/2/infer",
        json={
            "inputs": [
                {"name": "tenure_months", "shape": [1], "datatype": "FP64", "data": [3]},
                {"name": "monthly_spend", "shape": [1], "datatype": "FP64", "data": [80.5]},
                {"name": "plan", "shape": [1], "datatype": "BYTES", "data": ["basic"]},
                {"name": "region", "shape": [1], "datatype": "BYTES", "data": ["eu"]},
            ]
        },
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == ["churn"]
    records = [r for _, f in redis_client.xrange(settings.ledger_stream) for r in decode_entry(f)]
    assert [(r.model_name, r.model_version) for r in records] == [("churn", "10"), ("churn", "2")]
    assert records[0].features == {**CUSTOMER, "tenure_months": 3.0}


def test_mixed_types_are_validated_per_feature(client: TestClient) -> None:
    bad = {**CUSTOMER, "plan": 3, "monthly_spend": "lots"}
    response = client.post("/v1/models/churn/predict", json={"instances": [bad]})
    assert response.status_code == 422
    fields = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert fields == {
        "instances[0].monthly_spend": "monthly_spend must be a number",
        "instances[0].plan": "plan must be a string",
    }


def test_regressor_and_classifier_without_probabilities(client: TestClient) -> None:
    spend = client.post("/v1/models/spend/predict", json={"instances": [[12], [60]]}).json()
    values = [p["label"] for p in spend["predictions"]]
    assert all(isinstance(v, float) for v in values)
    assert values[0] != values[1]
    assert all(p["probabilities"] is None for p in spend["predictions"])
    svc = client.post("/v1/models/svc/predict", json={"instances": [[2, 40]]}).json()
    assert svc["predictions"][0]["label"] in ("churn", "stay")
    assert svc["predictions"][0]["probabilities"] is None
    v2 = client.post(
        "/v2/models/spend/infer",
        json={"inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", "data": [12]}]},
    ).json()
    assert v2["outputs"] == [
        {"name": "label", "shape": [1], "datatype": "FP64", "data": [values[0]]}
    ]


def test_openapi_describes_each_models_features(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    churn = document["paths"]["/v1/models/churn/predict"]["post"]
    body = churn["requestBody"]["content"]["application/json"]
    assert body["example"]["instances"][0]["plan"] in ("basic", "pro", "team")
    rows = document["components"]["schemas"]["ChurnRows"]["properties"]["instances"]["items"]
    by_name = rows["anyOf"][0]["properties"]
    assert by_name == {
        "tenure_months": {"type": "number"},
        "monthly_spend": {"type": "number"},
        "plan": {"type": "string"},
        "region": {"type": "string"},
    }
    assert "version 10" in churn["summary"]
    iris = document["paths"]["/v1/models/iris/predict"]["post"]
    assert iris["requestBody"]["content"]["application/json"]["example"] == {
        "instances": [
            {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
        ]
    }
    # the example is a request the model answers
    example = iris["requestBody"]["content"]["application/json"]["example"]
    assert client.post("/v1/models/iris/predict", json=example).status_code == 200
    assert "InferenceRequest" in document["components"]["schemas"]


def test_pinned_versions(settings: ApiSettings) -> None:
    pinned = settings.model_copy(update={"model_versions": "churn=2"})
    with TestClient(create_app(pinned), raise_server_exceptions=False) as client:
        response = client.post("/v1/models/churn/predict", json={"instances": [CUSTOMER]})
        assert response.json()["model"] == {"name": "churn", "version": "2"}
        assert client.get("/v1/models/churn").json()["version"] == "2"
    missing = settings.model_copy(update={"model_versions": "churn=9"})
    with TestClient(create_app(missing), raise_server_exceptions=False) as client:
        response = client.post("/v1/models/churn/predict", json={"instances": [CUSTOMER]})
        assert response.status_code == 404
        assert "no version '9' of model 'churn'" in response.json()["detail"]
