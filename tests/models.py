"""Models of the kinds people bring, fitted here (no binaries in the repository)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

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
