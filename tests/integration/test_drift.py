"""Training references loaded at start-up, and the drift views checked against numpy.

The served rows are inserted straight into `predictions`, as the worker stores them, on days of
our choosing; each PSI is then computed again here from the same rows and the reference bins
read back, with numpy (searchsorted for ranges, equality for categories), never with SQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sklearn.linear_model import Ridge
from sqlalchemy import Engine, create_engine, insert, text

from berth_api.app import create_app
from berth_api.bundles.bundle import load_bundle, read_metadata
from berth_api.bundles.package import package
from berth_api.bundles.train import IRIS_FEATURES
from berth_api.ledger.references import record_version, record_versions_forever
from berth_api.serving.predictor import Predictor
from berth_common.settings import ApiSettings
from berth_common.tables import predictions
from tests.models import CHURN_COLUMNS, churn_frame, save

FLOOR = 1e-4  # the views' convention: a share below 1e-4 counts as 1e-4
DAY_1, DAY_2, DAY_3 = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)


@contextmanager
def references_log(caplog: pytest.LogCaptureFixture, level: int) -> Iterator[None]:
    """caplog, on the loader's own logger: create_app replaces the root logger's handlers."""
    logger = logging.getLogger("berth_api.ledger.references")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(level, logger=logger.name):
            yield
    finally:
        logger.removeHandler(caplog.handler)


def wait_for_version(
    engine: Engine, name: str, version: str, sha256: str, timeout: float = 15.0
) -> dict[str, Any]:
    """The model_versions row, once the API's background task has written this sha256."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as connection:
            row = (
                connection.execute(
                    text(
                        "SELECT * FROM model_versions WHERE (model_name, model_version) = (:n, :v)"
                    ),
                    {"n": name, "v": version},
                )
                .mappings()
                .first()
            )
        if row is not None and row["sha256"] == sha256:
            return dict(row)
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}/{version} with sha256 {sha256} not recorded: {row}")
        time.sleep(0.05)


def store_served(
    engine: Engine,
    model: tuple[str, str],
    day: date,
    rows: Sequence[dict[str, Any]],
    answers: Sequence[Any],
    *,
    at: clock = clock(12, 0),
) -> None:
    """Rows as the worker stores them, served on `day` (UTC)."""
    served_at = datetime.combine(day, at, tzinfo=UTC)
    request_id = uuid.uuid4().hex
    with engine.begin() as connection:
        connection.execute(
            insert(predictions),
            [
                {
                    "request_id": request_id,
                    "row_index": i,
                    "model_name": model[0],
                    "model_version": model[1],
                    "features": features,
                    "prediction": answer,
                    "probabilities": None,
                    "cached": False,
                    "latency_ms": 1.0,
                    "served_at": served_at + timedelta(microseconds=i),
                }
                for i, (features, answer) in enumerate(zip(rows, answers, strict=True))
            ],
        )


def reference_bins(engine: Engine, name: str, version: str) -> dict[tuple[str, str], list[Any]]:
    """The stored bins of each (subject, name), in bin order."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT subject, name, bin, lower, upper, category, expected FROM reference_bins "
                "WHERE (model_name, model_version) = (:n, :v) ORDER BY subject, name, bin"
            ),
            {"n": name, "v": version},
        ).all()
    found: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        found.setdefault((row.subject, row.name), []).append(row)
    return found


def same_json(a: Any, b: Any) -> bool:
    """Equality as jsonb has it: numbers by value, but a boolean is no number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def numpy_psi(bins: Sequence[Any], values: Sequence[Any]) -> tuple[int, float]:
    """(values counted, PSI) of served `values` against stored `bins`, by numpy."""
    expected = np.array([b.expected for b in bins])
    if any(b.category is not None for b in bins):
        other = next(i for i, b in enumerate(bins) if b.category is None)
        placed = [
            next((i for i, b in enumerate(bins) if same_json(b.category, v)), other) for v in values
        ]
        counts = np.bincount(placed, minlength=len(bins))
    else:
        numbers = np.array(
            [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)],
            dtype=float,
        )
        edges = np.array([b.lower for b in bins[1:]])
        assert np.all(edges == np.array([b.upper for b in bins[:-1]]))
        counts = np.bincount(np.searchsorted(edges, numbers, side="right"), minlength=len(bins))
    actual = np.maximum(counts / counts.sum(), FLOOR)
    expected = np.maximum(expected, FLOOR)
    return int(counts.sum()), float(np.sum((actual - expected) * np.log(actual / expected)))


def drift_rows(engine: Engine, view: str, name: str, version: str) -> dict[tuple[Any, ...], Any]:
    key = "feature, day" if view == "feature_drift" else "day"
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                f"SELECT {key}, served, psi FROM {view} "
                "WHERE (model_name, model_version) = (:n, :v)"
            ),
            {"n": name, "v": version},
        ).all()
    return {tuple(row[:-2]): (row.served, row.psi) for row in rows}


def check_views_against_numpy(
    engine: Engine,
    model: tuple[str, str],
    served: dict[date, tuple[list[dict[str, Any]], list[Any]]],
    features: Sequence[str],
) -> tuple[dict[tuple[Any, ...], Any], dict[tuple[Any, ...], Any]]:
    """Every (feature, day) and (day) figure of the views equals numpy's; both views' rows."""
    bins = reference_bins(engine, *model)
    feature_drift = drift_rows(engine, "feature_drift", *model)
    prediction_drift = drift_rows(engine, "prediction_drift", *model)
    assert set(feature_drift) == {(f, day) for f in features for day in served}
    assert set(prediction_drift) == {(day,) for day in served}
    for day, (rows, answers) in served.items():
        for feature in features:
            count, psi = numpy_psi(bins[("feature", feature)], [r.get(feature) for r in rows])
            assert feature_drift[(feature, day)][0] == count
            assert feature_drift[(feature, day)][1] == pytest.approx(psi, abs=1e-9, rel=0)
        count, psi = numpy_psi(bins[("prediction", "")], answers)
        assert prediction_drift[(day,)] == (count, pytest.approx(psi, abs=1e-9, rel=0))
    return feature_drift, prediction_drift


def iris_rows(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    data = load_iris().data
    picked = data[rng.integers(0, len(data), count)]
    return [dict(zip(IRIS_FEATURES, row, strict=True)) for row in picked.tolist()]


def answers_of(bundle_dir: Path, rows: list[dict[str, Any]]) -> list[Any]:
    bundle = load_bundle(bundle_dir)
    ordered = [[row[f.name] for f in bundle.metadata.features] for row in rows]
    return [out.label for out in Predictor.for_bundle(bundle).predict(ordered)]


@pytest.fixture
def started(settings: ApiSettings, redis_client: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_reference_is_loaded_at_start_up(
    client: TestClient, engine: Engine, iris_models_dir: Path
) -> None:
    metadata = read_metadata(iris_models_dir / "iris" / "1")
    reference = metadata.reference
    assert reference is not None
    row = wait_for_version(engine, "iris", "1", metadata.sha256)
    assert (row["task"], row["classes"], row["reference_rows"]) == (
        "classification",
        ["setosa", "versicolor", "virginica"],
        112,
    )
    assert row["features"] == [{"name": name, "type": "number"} for name in IRIS_FEATURES]
    stored = reference_bins(engine, "iris", "1")
    expected = {("feature", name): d.bins for name, d in reference.features.items()}
    expected[("prediction", "")] = reference.prediction.bins
    assert set(stored) == set(expected)
    for key, bins in expected.items():
        assert [(b.bin, b.lower, b.upper, b.category, b.expected) for b in stored[key]] == [
            (i, b.lower, b.upper, b.category, b.expected) for i, b in enumerate(bins)
        ]


def test_iris_drift_matches_numpy(
    client: TestClient, engine: Engine, iris_models_dir: Path
) -> None:
    bundle_dir = iris_models_dir / "iris" / "1"
    wait_for_version(engine, "iris", "1", read_metadata(bundle_dir).sha256)
    rng = np.random.default_rng(11)
    served: dict[date, tuple[list[dict[str, Any]], list[Any]]] = {}
    for day in (DAY_1, DAY_2):
        rows = iris_rows(rng, 400)
        served[day] = (rows, answers_of(bundle_dir, rows))
    shifted = [{**row, "petal_length": row["petal_length"] + 3} for row in iris_rows(rng, 400)]
    served[DAY_3] = (shifted, answers_of(bundle_dir, shifted))
    # two rows whose sepal_width is not a number: not counted for that feature, counted for others
    rows, answers = served[DAY_2]
    rows.extend([{**rows[0], "sepal_width": None}, {**rows[1], "sepal_width": "?"}])
    answers.extend(answers[:2])
    for day, (rows, answers) in served.items():
        # the day's first rows a minute before midnight UTC: still that day, whatever the zone
        store_served(engine, ("iris", "1"), day, rows[:50], answers[:50], at=clock(23, 59))
        store_served(engine, ("iris", "1"), day, rows[50:], answers[50:])
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL TIME ZONE 'Asia/Tokyo'"))
        days = connection.execute(text("SELECT DISTINCT day FROM feature_drift")).scalars().all()
    assert sorted(days) == [DAY_1, DAY_2, DAY_3]

    features, answers_drift = check_views_against_numpy(
        engine, ("iris", "1"), served, IRIS_FEATURES
    )
    assert features[("sepal_width", DAY_2)][0] == 400
    assert features[("petal_length", DAY_2)][0] == 402
    assert features[("petal_length", DAY_3)][1] > 0.25
    unshifted = {key: psi for key, (_, psi) in features.items() if key != ("petal_length", DAY_3)}
    assert max(unshifted.values()) < 0.1, unshifted
    assert answers_drift[(DAY_1,)][1] < 0.1
    assert answers_drift[(DAY_2,)][1] < 0.1
    # petal length alone moved: the forest now answers virginica far more often
    assert answers_drift[(DAY_3,)][1] > 0.25


def test_drift_bins_show_every_bin_and_its_share(
    client: TestClient, engine: Engine, iris_models_dir: Path
) -> None:
    wait_for_version(engine, "iris", "1", read_metadata(iris_models_dir / "iris" / "1").sha256)
    rows = [dict(zip(IRIS_FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True))] * 3
    store_served(engine, ("iris", "1"), DAY_1, rows, ["setosa"] * 3)
    with engine.connect() as connection:
        bins = connection.execute(
            text(
                "SELECT bin, category, observed, served, actual, expected, psi_term "
                "FROM drift_bins WHERE model_name = 'iris' AND subject = 'prediction' "
                "ORDER BY bin"
            )
        ).all()
    assert [(b.category, b.observed, b.served, b.actual) for b in bins] == [
        ("setosa", 3, 3, 1.0),
        ("versicolor", 0, 3, 0.0),
        ("virginica", 0, 3, 0.0),
        (None, 0, 3, 0.0),
    ]
    e = max(bins[1].expected, FLOOR)
    assert bins[1].psi_term == pytest.approx((FLOOR - e) * math.log(FLOOR / e), abs=1e-12)
    assert bins[3].psi_term == 0.0  # neither share above the floor


def test_categorical_drift_with_unseen_categories(
    settings: ApiSettings, churn_models_dir: Path, redis_client: redis.Redis, engine: Engine
) -> None:
    bundle_dir = churn_models_dir / "churn" / "1"
    metadata = read_metadata(bundle_dir)
    assert metadata.reference is not None
    assert metadata.reference.prediction.source == "predictions"
    frame, _ = churn_frame(300)
    usual: list[dict[str, Any]] = frame[CHURN_COLUMNS].to_dict("records")
    rng = np.random.default_rng(5)
    unusual = [
        {
            **row,
            "plan": "enterprise" if rng.random() < 0.4 else row["plan"],
            "region": "latam" if rng.random() < 0.05 else row["region"],
        }
        for row in usual
    ]
    served = {
        DAY_1: (usual[:150], answers_of(bundle_dir, usual[:150])),
        DAY_2: (unusual, answers_of(bundle_dir, unusual)),
    }
    with TestClient(create_app(settings.model_copy(update={"models_dir": churn_models_dir}))):
        wait_for_version(engine, "churn", "1", metadata.sha256)
    for day, (rows, answers) in served.items():
        store_served(engine, ("churn", "1"), day, rows, answers)
    features, _ = check_views_against_numpy(engine, ("churn", "1"), served, CHURN_COLUMNS)
    assert features[("plan", DAY_2)][1] > 0.25
    assert features[("plan", DAY_1)][1] < features[("plan", DAY_2)][1]
    with engine.connect() as connection:
        enterprise = connection.execute(
            text(
                "SELECT observed FROM drift_bins WHERE model_name = 'churn' AND name = 'plan' "
                "AND day = :day AND category IS NULL"
            ),
            {"day": DAY_2},
        ).scalar_one()
    assert enterprise == sum(row["plan"] == "enterprise" for row in unusual) > 0


def test_regressor_drift_bins_the_values_answered(
    settings: ApiSettings,
    redis_client: redis.Redis,
    engine: Engine,
    iris_models_dir: Path,
    tmp_path: Path,
) -> None:
    """A regressor's answers in decile ranges of its training targets."""
    frame, _ = churn_frame(200)
    sample = tmp_path / "spend.csv"
    frame[["tenure_months", "monthly_spend"]].to_csv(sample, index=False)
    model = Ridge().fit(frame[["tenure_months"]], frame["monthly_spend"])
    package(
        save(model, tmp_path / "spend.joblib"),
        iris_models_dir,
        "spend",
        "1",
        sample,
        target="monthly_spend",
        report=lambda _: None,
    )
    bundle_dir = iris_models_dir / "spend" / "1"
    with TestClient(create_app(settings)):
        wait_for_version(engine, "spend", "1", read_metadata(bundle_dir).sha256)
    rng = np.random.default_rng(8)
    usual = [{"tenure_months": float(t)} for t in rng.integers(1, 72, 300)]
    newcomers = [{"tenure_months": float(t)} for t in rng.integers(1, 6, 300)]
    served = {
        DAY_1: (usual, answers_of(bundle_dir, usual)),
        DAY_2: (newcomers, answers_of(bundle_dir, newcomers)),
    }
    assert all(isinstance(answer, float) for answer in served[DAY_1][1])
    for day, (rows, answers) in served.items():
        store_served(engine, ("spend", "1"), day, rows, answers)
    features, answers_drift = check_views_against_numpy(
        engine, ("spend", "1"), served, ["tenure_months"]
    )
    assert features[("tenure_months", DAY_2)][1] > 0.25
    assert answers_drift[(DAY_2,)][1] > answers_drift[(DAY_1,)][1]


def test_a_bundle_without_a_reference_loads_and_has_no_drift_rows(
    settings: ApiSettings, redis_client: redis.Redis, engine: Engine, iris_models_dir: Path
) -> None:
    """A bundle made before references existed: iris/2, the same model without one."""
    old = iris_models_dir / "iris" / "2"
    shutil.copytree(iris_models_dir / "iris" / "1", old)
    document = json.loads((old / "metadata.json").read_text())
    del document["reference"]
    document["version"] = "2"
    (old / "metadata.json").write_text(json.dumps(document))
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/models/iris").json()["version"] == "2"
        row = wait_for_version(engine, "iris", "2", document["sha256"])
        wait_for_version(engine, "iris", "1", document["sha256"])
    assert row["reference_rows"] is None
    assert reference_bins(engine, "iris", "2") == {}
    rows = iris_rows(np.random.default_rng(1), 20)
    for version in ("1", "2"):
        store_served(engine, ("iris", version), DAY_1, rows, ["setosa"] * 20)
    with engine.connect() as connection:
        for view in ("feature_drift", "prediction_drift", "drift_bins"):
            versions = connection.execute(text(f"SELECT DISTINCT model_version FROM {view}"))
            assert versions.scalars().all() == ["1"]


def test_a_bundle_replaced_under_its_version_is_recorded_again(
    settings: ApiSettings,
    redis_client: redis.Redis,
    engine: Engine,
    iris_models_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metadata = read_metadata(iris_models_dir / "iris" / "1")
    # what an earlier start recorded for another file under iris/1, without a reference
    earlier = metadata.model_copy(update={"sha256": "0" * 64, "reference": None})
    assert record_version(engine, earlier) == "recorded"
    assert record_version(engine, earlier) == "unchanged"
    with engine.connect() as connection:
        first_loaded = connection.execute(text("SELECT first_loaded_at FROM model_versions"))
        first_loaded_at = first_loaded.scalar_one()
    with references_log(caplog, logging.INFO), TestClient(create_app(settings)):
        row = wait_for_version(engine, "iris", "1", metadata.sha256)
    assert row["reference_rows"] == 112
    assert row["first_loaded_at"] == first_loaded_at
    assert len(reference_bins(engine, "iris", "1")) == 5
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"recorded with model file sha256 {'0' * 64} and is now served with" in error.message
    assert "model version iris/1 replaced in the database" in caplog.text
    # the next start finds it as it is
    assert record_version(engine, metadata) == "unchanged"


def test_start_up_does_not_wait_for_the_database(
    settings: ApiSettings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    unreachable = settings.model_copy(update={"postgres_port": 1})
    with references_log(caplog, logging.WARNING):
        started = time.monotonic()
        with TestClient(create_app(unreachable)) as client:
            response = client.post("/predict", json={"features": [5.1, 3.5, 1.4, 0.2]})
            assert response.status_code == 200, response.text
            deadline = time.monotonic() + 10
            while "not recorded in the database yet" not in caplog.text:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert time.monotonic() - started < 10  # and shutting down did not wait for it either
    assert "1 model version(s) not recorded in the database yet" in caplog.text


def test_recording_retries_until_the_database_answers(
    database_url: str, engine: Engine, iris_models_dir: Path
) -> None:
    dbapi = engine.dialect.loaded_dbapi  # psycopg2
    attempts = 0

    def connect() -> Any:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise dbapi.OperationalError("the database system is starting up")
        return dbapi.connect(**engine.url.translate_connect_args(username="user"))

    flaky = create_engine(database_url, creator=connect)
    metadata = read_metadata(iris_models_dir / "iris" / "1")
    try:
        asyncio.run(
            record_versions_forever(flaky, [metadata], asyncio.Event(), retry_first_seconds=0.01)
        )
    finally:
        flaky.dispose()
    assert attempts == 3
    wait_for_version(engine, "iris", "1", metadata.sha256, timeout=0)


def test_no_drift_rows_without_a_reference_in_the_database(
    engine: Engine, iris_models_dir: Path
) -> None:
    """Rows served by a version whose reference was never loaded are in no view."""
    bundle_dir = iris_models_dir / "iris" / "1"
    rows = iris_rows(np.random.default_rng(2), 10)
    store_served(engine, ("iris", "1"), DAY_1, rows, answers_of(bundle_dir, rows))
    with engine.connect() as connection:
        for view in ("feature_drift", "prediction_drift", "drift_bins"):
            assert connection.execute(text(f"SELECT count(*) FROM {view}")).scalar_one() == 0
