"""Models of the kinds people bring, fitted here (no binaries in the repository)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

from berth_api.bundles.bundle import file_sha256

CHURN_COLUMNS = ["tenure_months", "monthly_spend", "plan", "region"]


def churn_frame(rows: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "tenure_months": rng.integers(1, 72, rows).astype(float),
            "monthly_spend": rng.normal(50, 15, rows).round(2),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "region": rng.choice(["eu", "us", "apac"], rows),
        }
    )
    churned = (frame["tenure_months"] < 12) | (
        (frame["plan"] == "basic") & (frame["monthly_spend"] > 55)
    )
    return frame, np.where(churned, "churn", "stay")


def churn_pipeline() -> Pipeline:
    """Numeric columns scaled, string categories one-hot encoded, fitted on a DataFrame."""
    frame, target = churn_frame()
    columns = ColumnTransformer(
        [
            ("numbers", StandardScaler(), ["tenure_months", "monthly_spend"]),
            ("categories", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=500))]).fit(
        frame, target
    )


def spend_regressor() -> Ridge:
    frame, _ = churn_frame()
    return Ridge().fit(frame[["tenure_months"]].to_numpy(), frame["monthly_spend"].to_numpy())


def no_proba_classifier() -> LinearSVC:
    frame, target = churn_frame()
    return LinearSVC().fit(frame[["tenure_months", "monthly_spend"]].to_numpy(), target)


def save(model: Any, path: Path) -> Path:
    joblib.dump(model, path)
    return path


def write_sample(path: Path, rows: int = 20) -> Path:
    frame, _ = churn_frame(rows)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CHURN_COLUMNS)
        writer.writerows(frame[CHURN_COLUMNS].itertuples(index=False))
    return path


class ClippedRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """A user's own estimator class: skops can write it, but Berth does not trust its type."""

    def __init__(self, low: float = 0.0) -> None:
        self.low = low

    def fit(self, x: Any, y: Any) -> ClippedRegressor:
        self.inner_ = Ridge().fit(x, y)
        self.n_features_in_ = self.inner_.n_features_in_
        return self

    def predict(self, x: Any) -> Any:
        return np.maximum(self.inner_.predict(x), self.low)


def clipped_regressor() -> ClippedRegressor:
    frame, _ = churn_frame()
    return ClippedRegressor().fit(
        frame[["tenure_months"]].to_numpy(), frame["monthly_spend"].to_numpy()
    )


def touch_then(marker: str, model: Any) -> Any:
    """What unpickling a MarkedModel calls: any code at all could run here."""
    Path(marker).touch()
    return model


class MarkedModel:
    """Pickled, it unpickles by calling touch_then: the marker file appears exactly when the
    pickle is loaded, and the result is the wrapped, working model."""

    def __init__(self, marker: Path, model: Any) -> None:
        self.marker = marker
        self.model = model

    def __reduce__(self) -> tuple[Any, tuple[str, Any]]:
        return touch_then, (str(self.marker), self.model)


def make_legacy(bundle_dir: Path, model: Any) -> str:
    """Turns a bundle into one made before skops: `model` pickled into model.joblib, metadata.json
    without the format fields; the pickle's sha256."""
    (bundle_dir / "model.skops").unlink()
    joblib.dump(model, bundle_dir / "model.joblib")
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    del metadata["model_format"], metadata["skops_version"]
    metadata["sha256"] = file_sha256(bundle_dir / "model.joblib")
    (bundle_dir / "metadata.json").write_text(json.dumps(metadata))
    return str(metadata["sha256"])
