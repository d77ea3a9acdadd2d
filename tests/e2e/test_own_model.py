"""Bring your own model on the live stack: package it in the packager image, restart, serve it."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import Engine, text

from tests.e2e.stack import Compose, wait_ready, wait_until

# Fits a mixed-type Pipeline inside the packager image (no binaries in the repository), saves it
# with joblib and a sample CSV, then packages it with the same CLI `make package` runs.
TRAIN_AND_PACKAGE = """
import sys
import joblib, numpy as np, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from berth_api.bundles.package import main
rng = np.random.default_rng(3)
frame = pd.DataFrame({"tenure": rng.integers(1, 60, 300).astype(float),
                      "plan": rng.choice(["basic", "pro"], 300)})
target = np.where((frame.tenure < 12) & (frame.plan == "basic"), "churn", "stay")
columns = ColumnTransformer([("n", StandardScaler(), ["tenure"]),
                             ("c", OneHotEncoder(handle_unknown="ignore"), ["plan"])])
model = Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, target)
joblib.dump(model, "/tmp/model.joblib")
frame.head(20).to_csv("/tmp/sample.csv", index=False)
sys.exit(main(["/tmp/model.joblib", "--name", "churn-e2e", "--version", sys.argv[1],
               "--sample", "/tmp/sample.csv", "--models-dir", "/models"]))
"""


def test_packaged_model_is_served_after_restart(
    api: httpx.Client, compose: Compose, stack_db: Engine
) -> None:
    version = uuid.uuid4().hex[:8]
    packaged = compose(
        "run",
        "--rm",
        "--no-deps",
        "seed-model",
        "python",
        "-c",
        TRAIN_AND_PACKAGE,
        version,
        timeout=300,
    )
    assert f"packaged churn-e2e/{version}" in packaged.stdout
    assert "plan:string" in packaged.stdout
    assert "file: model.skops" in packaged.stdout  # the api loads it without running its code

    compose.restart(["api"])
    wait_ready(api, timeout=120)

    response = api.post(
        "/v1/models/churn-e2e/predict",
        json={"instances": [{"tenure": 3, "plan": "basic"}, {"tenure": 50, "plan": "pro"}]},
        headers={"X-Request-ID": f"byo-{version}"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "churn-e2e", "version": version}
    assert [p["label"] for p in body["predictions"]] == ["churn", "stay"]

    def stored() -> list[tuple[str, str]]:
        with stack_db.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT model_version, prediction #>> '{}' FROM predictions "
                    "WHERE request_id = :id ORDER BY row_index"
                ),
                {"id": f"byo-{version}"},
            )
            return [(row[0], row[1]) for row in rows]

    rows = wait_until(lambda: stored() if len(stored()) == 2 else None, what="2 rows", timeout=30)
    assert rows == [(version, "churn"), (version, "stay")]
