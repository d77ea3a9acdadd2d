"""A bundle that could run code at start-up is refused, and readiness and the log say why."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from sklearn.linear_model import LinearRegression

from berth_api.app import create_app
from berth_api.bundles.bundle import FeatureSpec, file_sha256, load_bundle, write_bundle
from berth_api.bundles.repackage import repackage
from berth_api.monitoring import ApiMetrics
from berth_api.serving.registry import ModelRegistry
from berth_common.settings import ApiSettings
from tests.models import MarkedModel, make_legacy

# rows near the class boundaries, where a forest's probabilities are neither 0 nor 1
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [6.3, 2.8, 4.9, 1.7], [5.9, 3.0, 5.0, 1.8]]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "unpickled"


@pytest.fixture
def settings(api_settings: ApiSettings, iris_models_dir: Path, marker: Path) -> ApiSettings:
    """The demo bundle, and marked/1: a pickle that creates `marker` when it is loaded."""
    line = LinearRegression().fit(np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0]))
    metadata = write_bundle(
        iris_models_dir,
        model=MarkedModel(marker, line),
        name="marked",
        version="1",
        features=[FeatureSpec(name="x")],
        report=lambda _: None,
    )
    assert metadata.model_format == "joblib"
    return api_settings.model_copy(update={"models_dir": iris_models_dir})


def test_pickle_is_refused_by_default(
    settings: ApiSettings, marker: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="berth_api.serving.registry"):
        registry = ModelRegistry.load(settings, ApiMetrics())
    registry.close()
    assert not marker.exists()
    reason = registry.failures["marked/1"]
    assert "model.joblib is a pickle, and pickles are refused" in reason
    assert "make repackage NAME=marked VERSION=1" in reason
    assert "PICKLE_SHA256=marked/1=" in reason
    assert "ALLOW_PICKLE=true" in reason
    assert f"not serving bundle marked/1: {reason}" in caplog.text

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200  # the default model serves; the bundle is reported
        bundles = ready.json()["checks"]["bundles"]
        assert bundles == {"ok": False, "detail": f"marked/1: {reason}"}
        response = client.post("/v1/models/marked/predict", json={"instances": [[3.0]]})
        assert response.status_code == 503
        assert "pickles are refused" in response.json()["detail"]
    assert not marker.exists()


def test_allow_pickle_loads_it(settings: ApiSettings, marker: Path) -> None:
    allowed = settings.model_copy(update={"allow_pickle": True})
    with TestClient(create_app(allowed), raise_server_exceptions=False) as client:
        assert marker.exists()  # the opt-in is what let its code run
        response = client.post("/v1/models/marked/predict", json={"instances": [[3.0]]})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == pytest.approx(7.0)
        assert "bundles" not in client.get("/readyz").json()["checks"]


def test_a_pin_loads_it_and_a_wrong_pin_refuses_it(settings: ApiSettings, marker: Path) -> None:
    digest = file_sha256(settings.models_dir / "marked" / "1" / "model.joblib")
    wrong = settings.model_copy(update={"pickle_sha256": f"marked/1={'a' * 64}"})
    registry = ModelRegistry.load(wrong, ApiMetrics())
    registry.close()
    assert "PICKLE_SHA256 pins marked/1 to" in registry.failures["marked/1"]
    assert not marker.exists()
    pinned = settings.model_copy(update={"pickle_sha256": f"iris/7={'b' * 64}, marked/1={digest}"})
    registry = ModelRegistry.load(pinned, ApiMetrics())
    registry.close()
    assert registry.failures == {}
    assert marker.exists()


def test_default_model_as_a_pickle_is_not_ready_until_repackaged(
    settings: ApiSettings, redis_client: redis.Redis
) -> None:
    settings = settings.model_copy(update={"compiled_models": False})  # scikit-learn itself
    bundle_dir = settings.models_dir / "iris" / "1"
    make_legacy(bundle_dir, load_bundle(bundle_dir).model)
    allowed = settings.model_copy(update={"allow_pickle": True})
    with TestClient(create_app(allowed), raise_server_exceptions=False) as client:
        as_pickle = client.post("/v1/models/iris/predict", json={"instances": ROWS}).json()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        detail = ready.json()["checks"]["model"]["detail"]
        assert "model iris/1 is not served: model.joblib is a pickle" in detail
        assert "make repackage NAME=iris VERSION=1" in detail
    repackage(settings.models_dir, "iris", "1", report=lambda _: None)
    # answers cached from the pickle would hide what the new model file says
    redis_client.delete(*redis_client.scan_iter(match=settings.keys.cache("*", "*", "*")))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").json()["checks"]["model"]["ok"] is True
        as_skops = client.post("/v1/models/iris/predict", json={"instances": ROWS}).json()
    assert [p.pop("cached") for p in as_skops["predictions"]] == [False] * len(ROWS)
    for row in as_pickle["predictions"]:
        del row["cached"]
    assert as_skops["predictions"] == as_pickle["predictions"]
