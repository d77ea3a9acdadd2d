"""The quality views (migration 0005) equal an independent computation of the same rows with
numpy and scikit-learn: latest actual per row, accuracy, MAE, RMSE, label coverage and delay,
and the confusion matrix."""

from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
)
from sqlalchemy import Engine, insert, text

from berth_common.tables import feedback, feedback_duplicates, model_versions, predictions

DAY0 = datetime(2026, 11, 27, tzinfo=UTC)
CLASSES = ["ant", "bee", "cat"]
# name, version, task in model_versions (None: no row), what it answers
MODELS = [
    ("insects", "1", "classification", "text"),
    ("insects", "2", "classification", "text"),
    ("price", "1", "regression", "number"),
    # no model_versions row: a classifier by its probabilities, a regressor by its numbers
    ("legacy", "1", None, "text"),
    ("legacy-reg", "1", None, "number"),
]


def _served(rng: random.Random, answers: str) -> tuple[Any, Any]:
    if answers == "text":
        label = rng.choice(CLASSES)
        return label, {c: (0.8 if c == label else 0.1) for c in CLASSES}
    return round(rng.uniform(0, 100), 3), None


def _actual(rng: random.Random, answers: str, prediction: Any) -> Any:
    if answers == "text":
        return prediction if rng.random() < 0.6 else rng.choice(CLASSES)
    return round(prediction + rng.gauss(0, 5), 3)


@pytest.fixture
def ledger(engine: Engine) -> dict[str, Any]:
    """Random predictions over four days, most of them labelled, some more than once."""
    rng = random.Random(11)
    rows: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    for name, version, _, answers in MODELS:
        for n in range(150):
            served_at = DAY0 + timedelta(seconds=rng.uniform(0, 4 * 86400))
            prediction, probabilities = _served(rng, answers)
            request_id = f"{name}-{version}-{n}"
            rows.append(
                {
                    "request_id": request_id,
                    "row_index": 0,
                    "model_name": name,
                    "model_version": version,
                    "features": {"x": n},
                    "prediction": prediction,
                    "probabilities": probabilities,
                    "cached": False,
                    "latency_ms": 1.0,
                    "served_at": served_at,
                }
            )
            if rng.random() < 0.3:
                continue  # unlabelled
            received_at = served_at
            for revision in range(rng.choice([1, 1, 2, 3])):
                received_at += timedelta(seconds=rng.uniform(1, 86400))
                item = {
                    "feedback_id": uuid.uuid4().hex,
                    "request_id": request_id,
                    "row_index": 0,
                    "actual": _actual(rng, answers, prediction),
                    "received_at": received_at,
                    "source": "api",
                }
                labels.append(item)
                if revision == 0 and rng.random() < 0.3:
                    # the same value again later: a receipt, not an actual
                    repeat = {
                        **item,
                        "feedback_id": uuid.uuid4().hex,
                        "received_at": received_at + timedelta(seconds=1),
                        "duplicate_of": item["feedback_id"],
                    }
                    repeats.append(repeat)
    with engine.begin() as connection:
        connection.execute(
            insert(model_versions),
            [
                {
                    "model_name": name,
                    "model_version": version,
                    "task": task,
                    "classes": CLASSES if task == "classification" else None,
                    "features": [{"name": "x", "type": "number"}],
                    "sha256": "0" * 64,
                }
                for name, version, task, _ in MODELS
                if task is not None
            ],
        )
        connection.execute(insert(predictions), rows)
        connection.execute(insert(feedback), labels)
        connection.execute(insert(feedback_duplicates), repeats)
    return {"rows": rows, "labels": labels, "repeats": repeats}


def _latest(ledger: dict[str, Any]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    first: dict[str, datetime] = {}
    for item in ledger["labels"]:
        key = item["request_id"]
        order = (item["received_at"], item["feedback_id"])
        if key not in latest or order > (latest[key]["received_at"], latest[key]["feedback_id"]):
            latest[key] = item
        first[key] = min(first.get(key, item["received_at"]), item["received_at"])
    return {key: {**item, "first_received_at": first[key]} for key, item in latest.items()}


def _task(name: str) -> str:
    return "regression" if name in ("price", "legacy-reg") else "classification"


def test_prediction_outcomes_has_every_prediction_with_its_latest_actual(
    engine: Engine, ledger: dict[str, Any]
) -> None:
    latest = _latest(ledger)
    with engine.connect() as connection:
        found = {
            row.request_id: row
            for row in connection.execute(text("SELECT * FROM prediction_outcomes"))
        }
        sent: dict[str, int] = dict(
            connection.execute(text("SELECT request_id, times_sent FROM latest_feedback")).all()
        )
    assert len(found) == len(ledger["rows"])
    repeats: defaultdict[str, int] = defaultdict(int)
    for item in ledger["repeats"]:
        repeats[item["request_id"]] += 1
    revisions: defaultdict[str, int] = defaultdict(int)
    for item in ledger["labels"]:
        revisions[item["request_id"]] += 1
    for row in ledger["rows"]:
        outcome = found[row["request_id"]]
        label = latest.get(row["request_id"])
        assert outcome.task == _task(row["model_name"])
        if label is None:
            assert (outcome.actual, outcome.correct, outcome.error) == (None, None, None)
            continue
        assert outcome.actual == label["actual"]
        assert outcome.received_at == label["received_at"]
        assert outcome.revisions == revisions[row["request_id"]]
        assert sent[row["request_id"]] == revisions[row["request_id"]] + repeats[row["request_id"]]
        if outcome.task == "classification":
            assert outcome.correct is (label["actual"] == row["prediction"])
            assert outcome.error is None
        else:
            assert outcome.correct is None
            assert outcome.error == pytest.approx(row["prediction"] - label["actual"])


def test_model_quality_daily_equals_scikit_learn_on_the_same_rows(
    engine: Engine, ledger: dict[str, Any]
) -> None:
    latest = _latest(ledger)
    groups: dict[tuple[str, str, date], list[dict[str, Any]]] = defaultdict(list)
    for row in ledger["rows"]:
        groups[(row["model_name"], row["model_version"], row["served_at"].date())].append(row)
    with engine.connect() as connection:
        view = {
            (r.model_name, r.model_version, r.day): r
            for r in connection.execute(text("SELECT * FROM model_quality_daily"))
        }
        columns = list(connection.execute(text("SELECT * FROM model_quality_daily LIMIT 0")).keys())
    assert columns == [
        "model_name",
        "model_version",
        "day",
        "predictions",
        "labelled",
        "accuracy",
        "mae",
        "rmse",
        "label_coverage",
        "label_delay_seconds",
    ]
    assert set(view) == set(groups)
    for key, rows in groups.items():
        got = view[key]
        labelled = [(row, latest[row["request_id"]]) for row in rows if row["request_id"] in latest]
        predicted = [row["prediction"] for row, _ in labelled]
        actual = [label["actual"] for _, label in labelled]
        assert (got.predictions, got.labelled) == (len(rows), len(labelled))
        assert got.label_coverage == pytest.approx(len(labelled) / len(rows))
        delays = [
            (label["first_received_at"] - row["served_at"]).total_seconds()
            for row, label in labelled
        ]
        assert got.label_delay_seconds == pytest.approx(float(np.median(delays)))
        if _task(key[0]) == "classification":
            assert got.accuracy == pytest.approx(accuracy_score(actual, predicted))
            assert (got.mae, got.rmse) == (None, None)
        else:
            assert got.accuracy is None
            assert got.mae == pytest.approx(mean_absolute_error(actual, predicted))
            assert got.rmse == pytest.approx(math.sqrt(mean_squared_error(actual, predicted)))


def test_confusion_matrix_equals_scikit_learn(engine: Engine, ledger: dict[str, Any]) -> None:
    latest = _latest(ledger)
    with engine.connect() as connection:
        cells = connection.execute(
            text("SELECT model_name, model_version, actual, predicted, rows FROM confusion_matrix")
        ).all()
    assert {(name, version) for name, version, *_ in cells} == {
        ("insects", "1"),
        ("insects", "2"),
        ("legacy", "1"),
    }
    for name, version in {(name, version) for name, version, *_ in cells}:
        rows = [
            row
            for row in ledger["rows"]
            if (row["model_name"], row["model_version"]) == (name, version)
            and row["request_id"] in latest
        ]
        expected = confusion_matrix(
            [latest[row["request_id"]]["actual"] for row in rows],
            [row["prediction"] for row in rows],
            labels=CLASSES,
        )
        got = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
        for cell_name, cell_version, actual, predicted, count in cells:
            if (cell_name, cell_version) == (name, version):
                got[CLASSES.index(actual), CLASSES.index(predicted)] = count
        assert (got == expected).all(), (name, version)


def test_views_of_an_empty_ledger_are_empty(engine: Engine) -> None:
    with engine.connect() as connection:
        for view in (
            "latest_feedback",
            "prediction_outcomes",
            "model_quality_daily",
            "confusion_matrix",
        ):
            assert connection.execute(text(f"SELECT count(*) FROM {view}")).scalar_one() == 0
