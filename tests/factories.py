"""Ledger records and bundle metadata for tests, every field set to something plausible."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from berth_api.bundles.bundle import BundleMetadata, FeatureSpec
from berth_common.ledger import PredictionRecord

SERVED_AT = datetime(2024, 5, 17, 12, 30, 15, 250000, tzinfo=UTC)
FEATURES = {"sepal_length": 5.1, "petal_width": 0.2, "note": None}


def make_record(request_id: str = "req-1", row_index: int = 0, **changes: Any) -> PredictionRecord:
    values: dict[str, Any] = {
        "request_id": request_id,
        "row_index": row_index,
        "model_name": "iris",
        "model_version": "3",
        "features": FEATURES,
        "prediction": "setosa",
        "probabilities": {"setosa": 0.97, "versicolor": 0.02, "virginica": 0.01},
        "cached": False,
        "latency_ms": 1.75,
        "served_at": SERVED_AT,
    }
    values.update(changes)
    return PredictionRecord(**values)


def make_metadata(*features: tuple[str, str], **changes: Any) -> BundleMetadata:
    """A classifier's metadata with these (name, type) features."""
    fields: dict[str, Any] = {
        "name": "m",
        "version": "1",
        "created_at": datetime.now(UTC),
        "task": "classification",
        "estimator": "X",
        "features": [FeatureSpec(name=n, type=t) for n, t in features],  # type: ignore[arg-type]
        "classes": ["a", "b"],
        "python_version": "3.11",
        "sklearn_version": "1",
        "joblib_version": "1",
        "sha256": "0" * 64,
    }
    return BundleMetadata(**{**fields, **changes})
