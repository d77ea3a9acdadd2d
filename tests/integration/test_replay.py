"""Replays of stored traffic through a candidate version, checked against the same figures
computed independently: scikit-learn's own predict on the stored rows, numpy for the rest."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sqlalchemy import Engine, func, select, text

from berth_api.bundles.package import package
from berth_api.ledger.replay import ReplayReport, main, replay
from berth_common.settings import ApiSettings
from berth_common.tables import feedback, predictions, replays
from tests.models import CHURN_COLUMNS, churn_frame, save, write_sample

START = datetime(2026, 11, 1, tzinfo=UTC)
# rows of stored traffic in the replayed window, one a second from START
TRAFFIC = 600
FIGURES = (
    "rows",
    "agreed",
    "labelled",
    "served_correct",
    "candidate_correct",
    "served_mae",
    "candidate_mae",
    "served_rmse",
    "candidate_rmse",
)


def churn_classifier(regularisation: float) -> Pipeline:
    frame, target = churn_frame()
    columns = ColumnTransformer(
        [
            ("numbers", StandardScaler(), ["tenure_months", "monthly_spend"]),
            ("categories", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
        ]
    )
    classifier = LogisticRegression(C=regularisation, max_iter=500)
    return Pipeline([("columns", columns), ("model", classifier)]).fit(frame, target)


def spend_regressor(alpha: float) -> Ridge:
    frame, _ = churn_frame()
    return Ridge(alpha=alpha).fit(frame[["tenure_months"]], frame["monthly_spend"])


def traffic(rows: int = TRAFFIC) -> pd.DataFrame:
    """Customers other than the ones the models were fitted on."""
    rng = np.random.default_rng(11)
    return pd.DataFrame(
        {
            "tenure_months": rng.integers(1, 72, rows).astype(float),
            "monthly_spend": rng.normal(50, 15, rows).round(2),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "region": rng.choice(["eu", "us", "apac"], rows),
        }
    )


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def store_served(
    engine: Engine,
    name: str,
    versions: list[str],
    rows: list[dict[str, Any]],
    served: list[Any],
    *,
    start: datetime = START,
) -> list[str]:
    """One stored row per row of features, served one a second from `start`; the request ids."""
    request_ids = [uuid.uuid4().hex for _ in rows]
    records = [
        {
            "request_id": request_id,
            "row_index": 0,
            "model_name": name,
            "model_version": version,
            "features": {k: plain(v) for k, v in features.items()},
            "prediction": plain(label),
            "probabilities": None,
            "cached": False,
            "latency_ms": 1.0,
            "served_at": start + timedelta(seconds=i),
        }
        for i, (request_id, version, features, label) in enumerate(
            zip(request_ids, versions, rows, served, strict=True)
        )
    ]
    with engine.begin() as connection:
        connection.execute(predictions.insert(), records)
    return request_ids


def send_feedback(engine: Engine, request_id: str, actual: Any, received_at: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(
            feedback.insert(),
            {
                "feedback_id": uuid.uuid4().hex,
                "request_id": request_id,
                "row_index": 0,
                "actual": actual,
                "received_at": received_at,
                "source": "api",
            },
        )


def stored_replays(engine: Engine, replay_id: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(select(replays).where(replays.c.replay_id == replay_id))
        return {row.served_version: dict(row._mapping) for row in rows}


def figures_of(report: ReplayReport) -> dict[str, dict[str, Any]]:
    return {v.served_version: v.figures(report.task) for v in report.versions}


def prediction_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(predictions)).scalar_one())


def cli_environment(settings: ApiSettings) -> dict[str, str]:
    """What the CLI reads its settings from, as the api container's environment holds them."""
    return {
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_USER": settings.postgres_user,
        "POSTGRES_PASSWORD": settings.postgres_password.get_secret_value(),
        "POSTGRES_DB": settings.postgres_db,
        "REDIS_PASSWORD": settings.redis_password.get_secret_value(),
        "MODELS_DIR": str(settings.models_dir),
    }


def assert_close(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() >= expected.keys()
    for key, want in expected.items():
        if isinstance(want, float):
            assert actual[key] == pytest.approx(want, rel=1e-9), key
        else:
            assert actual[key] == want, key


# ---- a classifier --------------------------------------------------------------------------


@pytest.fixture
def churn_settings(api_settings: ApiSettings, tmp_path: Path) -> ApiSettings:
    """churn/1 (the served version) and churn/2 (the candidate: far stronger regularisation,
    so that it answers some rows differently)."""
    sample = write_sample(tmp_path / "sample.csv")
    for version, model in (("1", churn_classifier(1.0)), ("2", churn_classifier(0.02))):
        path = save(model, tmp_path / f"churn-{version}.joblib")
        package(path, api_settings.models_dir, "churn", version, sample, report=lambda _: None)
    return api_settings


@pytest.fixture
def churn_traffic(engine: Engine) -> dict[str, Any]:
    """TRAFFIC rows served by churn/1 with its real answers, feedback for every third row (with
    an older, overruled value for some), rows outside the window, another model's rows and two
    rows served by a churn/0 whose features the candidate cannot take."""
    frame = traffic()
    served = churn_classifier(1.0).predict(frame[CHURN_COLUMNS]).tolist()
    request_ids = store_served(engine, "churn", ["1"] * TRAFFIC, records(frame), served)
    rng = np.random.default_rng(5)
    truth = rng.choice(["churn", "stay"], TRAFFIC, p=[0.4, 0.6])
    actuals: list[str | None] = [None] * TRAFFIC
    received = START + timedelta(days=2)
    for i in range(0, TRAFFIC, 3):
        send_feedback(engine, request_ids[i], str(truth[i]), received)
        actuals[i] = str(truth[i])
        if i % 2 == 0:  # sent earlier, then corrected: the newest is the actual
            other = "stay" if truth[i] == "churn" else "churn"
            send_feedback(engine, request_ids[i], other, received - timedelta(hours=1))
    until = START + timedelta(seconds=TRAFFIC)
    # outside the window (until is excluded), and another model: never replayed
    outside = records(traffic(3))
    store_served(engine, "churn", ["1", "1"], outside[:2], ["odd", "odd"], start=until)
    store_served(engine, "churn", ["1"], outside[2:], ["odd"], start=START - timedelta(hours=1))
    store_served(engine, "iris", ["1"], outside[:1], ["setosa"])
    # an older version that took another feature set, and a value of another type
    customer = {"tenure_months": 5.0, "monthly_spend": 42.0, "plan": "pro", "region": "eu"}
    changed = [{**customer, "region": 3}, {**customer, "coupon": "SAVE10"}]
    half_second = START + timedelta(milliseconds=500)
    store_served(engine, "churn", ["0", "0"], changed, ["stay", "stay"], start=half_second)
    return {"frame": frame, "served": served, "actuals": actuals, "until": until}


def expected_classifier(
    candidate: Pipeline, frame: pd.DataFrame, served: list[Any], actuals: list[Any]
) -> dict[str, Any]:
    answers = np.asarray(candidate.predict(frame[CHURN_COLUMNS]))
    served_array, actual_array = np.asarray(served), np.asarray(actuals, dtype=object)
    labelled = actual_array != None  # noqa: E711 - elementwise
    return {
        "rows": len(frame),
        "agreed": int((answers == served_array).sum()),
        "labelled": int(labelled.sum()),
        "served_correct": int((served_array[labelled] == actual_array[labelled]).sum()),
        "candidate_correct": int((answers[labelled] == actual_array[labelled]).sum()),
        "served_mae": None,
        "candidate_mae": None,
        "served_rmse": None,
        "candidate_rmse": None,
    }


def test_classifier_replay_equals_an_independent_computation(
    churn_settings: ApiSettings,
    churn_traffic: dict[str, Any],
    engine: Engine,
    redis_client: redis.Redis,
) -> None:
    before = prediction_count(engine)
    progress = io.StringIO()
    report = replay(
        churn_settings,
        engine,
        "churn",
        "2",
        since=START,
        until=churn_traffic["until"],
        progress=progress,
        batch_rows=64,  # several batches, and a bad row in the first
    )
    expected = expected_classifier(
        churn_classifier(0.02),
        churn_traffic["frame"],
        churn_traffic["served"],
        churn_traffic["actuals"],
    )
    assert report.task == "classification"
    assert report.engine == "scikit-learn"  # string features: never compiled
    figures = figures_of(report)
    assert figures["1"] == {"served_version": "1", **expected}
    # the candidate disagrees on some rows, and not on most
    assert 0 < expected["agreed"] < expected["rows"]
    assert expected["served_correct"] != expected["candidate_correct"]

    [old, current] = report.versions
    assert (old.served_version, old.rows, old.skipped) == ("0", 0, 2)
    assert old.skip_reasons == {
        "features: region must be a string": 1,
        "features: unknown feature names: 'coupon'": 1,
    }
    assert current.skipped == 0
    assert report.rows_read == TRAFFIC + 2

    # the table holds what was reported, once per served version, and nothing else changed
    stored = stored_replays(engine, report.replay_id)
    assert set(stored) == {"0", "1"}
    for version, row in stored.items():
        assert {k: row[k] for k in figures[version]} == figures[version]
        assert (row["model_name"], row["candidate_version"]) == ("churn", "2")
        assert (row["since"], row["until"]) == (START, churn_traffic["until"])
        assert row["started_at"] <= row["finished_at"]
    assert prediction_count(engine) == before
    assert redis_client.keys(f"{churn_settings.redis_key_prefix}:*") == []

    lines = progress.getvalue().splitlines()
    assert lines[-1].startswith(f"replay churn/2 (scikit-learn): {TRAFFIC + 2:,} / {TRAFFIC + 2:,}")
    assert "rows/s" in lines[-1]


def test_replaying_the_served_version_agrees_on_every_row(
    churn_settings: ApiSettings, churn_traffic: dict[str, Any], engine: Engine
) -> None:
    report = replay(churn_settings, engine, "churn", "1", since=START, until=churn_traffic["until"])
    served = report.versions[-1]
    assert served.served_version == "1"
    assert served.agreed == served.rows == TRAFFIC
    assert served.served_correct == served.candidate_correct


def test_the_window_selects_the_rows(
    churn_settings: ApiSettings, churn_traffic: dict[str, Any], engine: Engine
) -> None:
    everything = replay(churn_settings, engine, "churn", "1")
    # the three rows outside the window were answered "odd", which no version answers
    assert everything.rows_read == TRAFFIC + 2 + 3
    assert everything.versions[-1].agreed == TRAFFIC
    assert (everything.since, everything.until) == (None, None)

    half = START + timedelta(seconds=TRAFFIC // 2)
    first = replay(churn_settings, engine, "churn", "1", since=START, until=half)
    second = replay(churn_settings, engine, "churn", "1", since=half)
    assert first.rows_read == TRAFFIC // 2 + 2
    assert second.rows_read == TRAFFIC - TRAFFIC // 2 + 2
    assert stored_replays(engine, second.replay_id)["1"]["until"] is None


def test_cli_prints_and_stores_the_same_figures(
    churn_settings: ApiSettings,
    churn_traffic: dict[str, Any],
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in cli_environment(churn_settings).items():
        monkeypatch.setenv(key, value)
    window = ["--since", START.isoformat(), "--until", churn_traffic["until"].isoformat()]
    assert main(["--name", "churn", "--version", "2", "--json", *window]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert "rows/s" in err
    assert printed["rows_read"] == TRAFFIC + 2
    stored = stored_replays(engine, printed["replay_id"])
    for version in printed["versions"]:
        row = stored[version["served_version"]]
        assert {k: row[k] for k in FIGURES} == {k: version[k] for k in FIGURES}
    one = next(v for v in printed["versions"] if v["served_version"] == "1")
    assert one["agreement"] == one["agreed"] / one["rows"]
    assert one["served_accuracy"] == one["served_correct"] / one["labelled"]

    # the table, without --json: the same replay's figures for people
    assert main(["--name", "churn", "--version", "2", "--quiet", *window]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "churn traffic through candidate churn/2 (classification, scikit-learn)" in out
    header, *lines = [line.split() for line in out.splitlines()[2:5]]
    assert header[:2] == ["served", "by"]
    assert lines[1][:6] == [
        "1",
        f"{one['rows']:,}",
        f"{one['agreed']:,}",
        f"{one['agreement']:.1%}",
        "0",
        f"{one['labelled']:,}",
    ]
    assert "served by 0: 1 x features: unknown feature names: 'coupon'" in out

    # a candidate that is not there: a clear refusal, nothing stored
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).select_from(replays)).scalar_one()
    assert main(["--name", "churn", "--version", "9"]) == 2
    assert "cannot load the candidate: no bundle churn/9" in capsys.readouterr().err
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(replays)).scalar_one() == count


# ---- a regressor ---------------------------------------------------------------------------


def test_regressor_replay_equals_an_independent_computation(
    api_settings: ApiSettings, engine: Engine, tmp_path: Path
) -> None:
    """spend/1 and spend/2 each served half the traffic; spend/2 is replayed. Ridge compiles
    to ONNX: the candidate answers through onnxruntime, the served values came from
    scikit-learn, and the candidate still agrees with itself within the tolerance."""
    frame = traffic()[["tenure_months"]]
    models = {"1": spend_regressor(1.0), "2": spend_regressor(5000.0)}
    for version, model in models.items():
        path = save(model, tmp_path / f"spend-{version}.joblib")
        package(path, api_settings.models_dir, "spend", version, report=lambda _: None)
    versions = ["1" if i % 2 else "2" for i in range(TRAFFIC)]
    answers = {version: model.predict(frame).tolist() for version, model in models.items()}
    served = [answers[v][i] for i, v in enumerate(versions)]
    request_ids = store_served(engine, "spend", versions, records(frame), served)
    actual = np.round(np.random.default_rng(3).normal(50, 15, TRAFFIC), 2)
    labelled = [i for i in range(TRAFFIC) if i % 4 != 3]
    for i in labelled:
        send_feedback(engine, request_ids[i], float(actual[i]), START + timedelta(days=1))
    # a feedback that is not a number tells nothing about a regressor's error
    send_feedback(engine, request_ids[3], "unknown", START + timedelta(days=1))

    report = replay(api_settings, engine, "spend", "2")

    assert (report.task, report.engine) == ("regression", "onnxruntime")
    candidate = models["2"].predict(frame)
    for version in ("1", "2"):
        rows = [i for i in range(TRAFFIC) if versions[i] == version]
        mine = [i for i in rows if i in set(labelled)]
        served_v = np.asarray([served[i] for i in rows])
        close = np.abs(candidate[rows] - served_v) <= 1e-5 * np.maximum(1.0, np.abs(served_v))
        served_errors = np.asarray([served[i] for i in mine]) - actual[mine]
        candidate_errors = candidate[mine] - actual[mine]
        expected = {
            "rows": len(rows),
            "agreed": int(close.sum()),
            "labelled": len(mine),
            "served_correct": None,
            "candidate_correct": None,
            "served_mae": float(np.mean(np.abs(served_errors))),
            "served_rmse": float(np.sqrt(np.mean(served_errors**2))),
        }
        figures = figures_of(report)[version]
        assert_close(figures, expected)
        # ONNX and scikit-learn differ in the last digits at most
        assert figures["candidate_mae"] == pytest.approx(
            float(np.mean(np.abs(candidate_errors))), rel=1e-6
        )
        assert figures["candidate_rmse"] == pytest.approx(
            float(np.sqrt(np.mean(candidate_errors**2))), rel=1e-6
        )
    assert figures_of(report)["2"]["agreed"] == TRAFFIC // 2
    # the two lines cross: a few customers get the same answer from both
    assert figures_of(report)["1"]["agreed"] < TRAFFIC // 10
    stored = stored_replays(engine, report.replay_id)
    for version, row in stored.items():
        assert {k: row[k] for k in FIGURES} == {k: figures_of(report)[version][k] for k in FIGURES}


# ---- a million rows take bounded memory ----------------------------------------------------


def fill_iris_traffic(engine: Engine, first: int, last: int) -> None:
    """Rows first..last of iris/1 traffic, made in the database; every tenth with feedback."""
    with engine.begin() as connection:
        connection.execute(
            text(
                """
                INSERT INTO predictions (request_id, row_index, model_name, model_version,
                    features, prediction, probabilities, cached, latency_ms, served_at)
                SELECT 'r' || g, 0, 'iris', '1',
                    jsonb_build_object(
                        'sepal_length', round((4 + random() * 4)::numeric, 1),
                        'sepal_width', round((2 + random() * 2.5)::numeric, 1),
                        'petal_length', round((1 + random() * 6)::numeric, 1),
                        'petal_width', round((random() * 2.5)::numeric, 1)),
                    '"setosa"', NULL, false, 1.0,
                    timestamptz '2026-11-01 00:00:00+00' + g * interval '1 millisecond'
                FROM generate_series(:first, :last) AS g
                """
            ),
            {"first": first, "last": last},
        )
        connection.execute(
            text(
                """
                INSERT INTO feedback (feedback_id, request_id, row_index, actual, received_at,
                    source)
                SELECT 'f' || g, 'r' || g, 0, '"versicolor"', now(), 'bulk'
                FROM generate_series(:first, :last) AS g WHERE g % 10 = 0
                """
            ),
            {"first": first, "last": last},
        )


# The replay in a process of its own, whose peak resident memory (VmHWM, reset just before the
# replay starts) is what the replay took: in Python, and in libpq, which a client-side cursor
# would fill with every row.
REPLAY_AND_REPORT_GROWTH = """
import sys
from pathlib import Path
from berth_api.ledger.replay import main

def status(field):
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(l for l in lines if l.startswith(field)).split()[1]) * 1024

try:
    Path("/proc/self/clear_refs").write_text("5")  # the peak is now the current size
except OSError:  # not Linux, or a kernel that does not allow it
    before = None
else:
    before = status("VmRSS:")
code = main(sys.argv[1:])
print(-1 if before is None else status("VmHWM:") - before, file=sys.stderr)
sys.exit(code)
"""


def replay_in_a_process(
    settings: ApiSettings, name: str, version: str
) -> tuple[dict[str, Any], int]:
    """The CLI's JSON report, and by how much its process grew at the most, in bytes."""
    environment = {**os.environ, **cli_environment(settings)}
    arguments = ["--name", name, "--version", version, "--json", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", REPLAY_AND_REPORT_GROWTH, *arguments],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(done.stdout), int(done.stderr.strip().splitlines()[-1])


def test_memory_does_not_grow_with_the_rows(settings: ApiSettings, engine: Engine) -> None:
    """50,000 rows, then 200,000: the replay's peak memory stays that of a batch. Holding the
    rows (in Python, or in libpq without a server-side cursor) grows it with every row."""
    fill_iris_traffic(engine, 1, 50_000)
    small, small_growth = replay_in_a_process(settings, "iris", "1")
    fill_iris_traffic(engine, 50_001, 200_000)
    large, large_growth = replay_in_a_process(settings, "iris", "1")

    assert small["rows_read"] == 50_000
    assert large["rows_read"] == 200_000
    [version] = large["versions"]
    assert version["labelled"] == 20_000
    assert version["served_correct"] == 0  # all served "setosa", all labelled "versicolor"
    if small_growth < 0:
        pytest.skip("this kernel cannot reset a process's peak memory (/proc/self/clear_refs)")
    # About 45 MB each (the bundle, onnxruntime and a batch); reading the rows through a
    # client-side cursor makes the second 27 MB larger than the first.
    assert large_growth - small_growth < 8 * 2**20, (small_growth, large_growth)
