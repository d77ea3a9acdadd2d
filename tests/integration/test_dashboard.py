"""GET /dashboard/data against real PostgreSQL and Redis: every figure it gives is what SQL over
the same ledger (and the quality and drift views, and the replays) says; and who may open the
dashboard."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, insert, text

from berth_api.app import create_app
from berth_api.dashboard.assets import SECURITY_HEADERS, STATIC_FILES
from berth_api.dashboard.figures import REPLAYS
from berth_api.http.access import DASHBOARD_COOKIE
from berth_api.ledger.replay import replay
from berth_common.settings import ApiSettings
from berth_common.tables import feedback, predictions, replays
from tests.browser import CHROMIUM, Watched, chromium
from tests.integration.conftest import serving

CLASSES = ["setosa", "versicolor", "virginica"]
KEY = "dashboard-key-one"
METRICS_KEY = "scraper-key-0001"
BEARER = {"Authorization": f"Bearer {KEY}"}


def served_rows(
    now: datetime,
    count: int,
    *,
    tag: str = "recent",
    model: str = "iris",
    version: str = "1",
    minutes: float = 50,
) -> list[dict[str, Any]]:
    """`count` requests of one to three rows each, served over the last `minutes`."""
    rng = random.Random(count)
    rows = []
    for request in range(count):
        served_at = now - timedelta(seconds=rng.uniform(5, minutes * 60))
        latency = rng.lognormvariate(0, 0.8)
        cached = rng.random() < 0.3
        for index in range(rng.randint(1, 3)):
            rows.append(
                {
                    "request_id": f"dash-{tag}-{model}-{version}-{request}",
                    "row_index": index,
                    "model_name": model,
                    "model_version": version,
                    "features": {
                        "sepal_length": rng.uniform(4, 8),
                        "sepal_width": rng.uniform(2, 4.5),
                        "petal_length": rng.uniform(1, 7) + (3 if index else 0),
                        "petal_width": rng.uniform(0.1, 2.5),
                    },
                    "prediction": rng.choice([*CLASSES, "setosa"]),
                    "probabilities": None,
                    "cached": cached,
                    "latency_ms": latency,
                    "served_at": served_at,
                    "stored_at": served_at + timedelta(milliseconds=rng.uniform(5, 400)),
                }
            )
    return rows


def store(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        connection.execute(insert(predictions), rows)


def sql(engine: Engine, query: str, **parameters: Any) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(text(query), parameters))


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def wait_for_version_record(engine: Engine, model: str = "iris") -> None:
    """The API records its bundles (and their training references) in the background at start."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sql(engine, "SELECT 1 FROM model_versions WHERE model_name = :m", m=model):
            return
        time.sleep(0.05)
    pytest.fail("the API did not record its model versions")


@pytest.fixture
def ledger(engine: Engine, client: TestClient) -> datetime:
    """Traffic of iris/1 over the last 50 minutes, some older and some of another version (to
    be left out), and feedback for a part of it."""
    wait_for_version_record(engine)
    now = datetime.now(UTC)
    rows = served_rows(now, 120)
    store(engine, rows)
    store(
        engine, served_rows(now - timedelta(hours=2), 30, tag="old")
    )  # outside a 60-minute window
    store(engine, served_rows(now, 20, version="2"))  # another version
    labelled = rows[::3]
    with engine.begin() as connection:
        connection.execute(
            insert(feedback),
            [
                {
                    "feedback_id": f"fb-{i}",
                    "request_id": row["request_id"],
                    "row_index": row["row_index"],
                    "actual": row["prediction"] if i % 4 else "virginica",
                    "received_at": now,
                    "source": "api",
                }
                for i, row in enumerate(labelled)
            ],
        )
    return now


def test_the_figures_are_what_sql_says(
    client: TestClient, engine: Engine, ledger: datetime
) -> None:
    response = client.get("/dashboard/data", params={"minutes": 60})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model"] == {"name": "iris", "version": "1"}
    assert data["task"] == "classification"
    assert data["models"] == [{"name": "iris", "version": "1"}]
    window = data["window"]
    assert (window["minutes"], window["step_seconds"]) == (60, 60)
    since = datetime.fromisoformat(window["since"])
    until = datetime.fromisoformat(window["until"])
    assert until - since == timedelta(minutes=60)
    now = until.astimezone(UTC)
    scope = (
        "FROM predictions WHERE model_name = 'iris' AND model_version = '1'"
        " AND served_at >= :since AND served_at < :until"
    )
    bounds = {"since": since, "until": until}

    [(total, hits, p50, p99, lag)] = sql(
        engine,
        "SELECT count(*), count(*) FILTER (WHERE cached),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE row_index = 0),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE row_index = 0),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - served_at))"
        f" {scope}",
        **bounds,
    )
    assert total > 150
    assert data["traffic"]["total"] == total
    assert close(data["cache"]["hit_rate"], hits / total)
    assert close(data["latency"]["p50_ms"], p50)
    assert close(data["latency"]["p99_ms"], p99)
    assert close(data["ledger"]["lag_p99_seconds"], float(lag))

    # per minute: the charts' points, minute by minute
    per_minute = {
        int(minute): (n, p50, hit_rate)
        for minute, n, p50, hit_rate in sql(
            engine,
            "SELECT extract(epoch FROM date_trunc('minute', served_at)), count(*),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)"
            "   FILTER (WHERE row_index = 0), avg(cached::int)"
            f" {scope} GROUP BY 1",
            **bounds,
        )
    }
    buckets = data["buckets"]
    assert buckets == list(range(buckets[0], buckets[-1] + 1, 60))
    assert buckets[0] <= since.timestamp() < buckets[0] + 60
    assert buckets[-1] <= until.timestamp() < buckets[-1] + 60
    for i, bucket in enumerate(buckets):
        n, p50, hit_rate = per_minute.get(bucket, (0, None, None))
        assert data["traffic"]["per_minute"][i] == n
        assert close(data["latency"]["p50"][i], p50)
        assert close(data["cache"]["series"][i], None if hit_rate is None else float(hit_rate))

    # the class mix beside the training mix
    mix = {s["name"]: s for s in data["mix"]["series"]}
    assert data["mix"]["kind"] == "classes"
    assert list(mix) == CLASSES
    shares = dict(
        sql(
            engine,
            f"SELECT prediction #>> '{{}}', count(*)::float / {total} {scope} GROUP BY 1",
            **bounds,
        )
    )
    training = dict(
        sql(
            engine,
            "SELECT category #>> '{}', sum(expected) FROM reference_bins WHERE model_name = 'iris'"
            " AND model_version = '1' AND subject = 'prediction' GROUP BY 1",
        )
    )
    for label in CLASSES:
        assert close(mix[label]["window"], shares.get(label, 0.0))
        assert close(mix[label]["training"], training.get(label))
    for i, n in enumerate(data["traffic"]["per_minute"]):
        total_share = sum(mix[label]["values"][i] or 0 for label in CLASSES)
        assert math.isclose(total_share, 1.0) if n else total_share == 0

    # quality and drift: the views, for the last 14 days
    quality = data["quality"]
    assert quality["available"]
    days = [datetime.fromisoformat(d).date() for d in quality["days"]]
    assert days == [now.date() - timedelta(days=n) for n in range(13, -1, -1)]
    assert quality["latest"] == now.date().isoformat()
    expected_quality = {
        day: rest
        for day, *rest in sql(
            engine,
            "SELECT day, predictions, labelled, accuracy, label_coverage FROM model_quality_daily"
            " WHERE model_name = 'iris' AND model_version = '1' AND day >= :first",
            first=days[0],
        )
    }
    for i, day in enumerate(days):
        n, labelled, accuracy, coverage = expected_quality.get(day, (0, 0, None, None))
        assert (quality["predictions"][i], quality["labelled"][i]) == (n, labelled)
        assert close(quality["accuracy"][i], accuracy)
        assert close(quality["label_coverage"][i], coverage)
    assert quality["labelled"][-1] > 0
    assert 0 < quality["accuracy"][-1] < 1

    drift = data["drift"]
    assert drift["available"]
    assert drift["days"] == quality["days"]
    top = sql(
        engine,
        "SELECT feature, psi FROM feature_drift WHERE model_name = 'iris' AND model_version = '1'"
        " AND day = :today ORDER BY psi DESC, feature LIMIT 5",
        today=now.date(),
    )
    assert drift["latest"] == (now.date().isoformat() if top else None)
    assert [(f["feature"], f["psi"]) for f in drift["features"]] == [
        (feature, pytest.approx(psi)) for feature, psi in top
    ]
    if training:  # the demo bundle carries a training reference
        assert len(drift["features"]) == 4


def test_the_window_and_the_version_choose_the_rows(
    client: TestClient, engine: Engine, ledger: datetime
) -> None:
    day = client.get("/dashboard/data", params={"minutes": 24 * 60}).json()
    assert day["window"]["step_seconds"] == 720
    assert len(day["buckets"]) in (120, 121)
    [(in_day,)] = sql(
        engine,
        "SELECT count(*) FROM predictions WHERE model_name = 'iris' AND model_version = '1'"
        " AND served_at >= :since AND served_at < :until",
        since=datetime.fromisoformat(day["window"]["since"]),
        until=datetime.fromisoformat(day["window"]["until"]),
    )
    assert day["traffic"]["total"] == in_day
    assert sum(day["traffic"]["per_minute"]) * 12 == pytest.approx(in_day)
    hour = client.get("/dashboard/data", params={"minutes": 60}).json()
    assert hour["traffic"]["total"] < in_day  # the rows of two hours ago


def test_a_regressor_shows_quantiles_of_its_values(
    engine: Engine, settings: ApiSettings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from berth_api.bundles.package import package
    from tests.models import save, spend_regressor

    package(save(spend_regressor(), tmp_path / "r.joblib"), settings.models_dir, "spend", "1")
    now = datetime.now(UTC)
    rows = served_rows(now, 40, model="spend")
    for i, row in enumerate(rows):
        row["prediction"] = 10.0 + i % 17
    store(engine, rows)
    with TestClient(create_app(settings)) as client:
        data = client.get("/dashboard/data", params={"model": "spend"}).json()
    assert data["task"] == "regression"
    assert data["mix"]["kind"] == "quantiles"
    window = data["window"]
    [(quantiles,)] = sql(
        engine,
        "SELECT percentile_cont(ARRAY[0.1, 0.5, 0.9]) WITHIN GROUP"
        " (ORDER BY (prediction #>> '{}')::float8) FROM predictions WHERE model_name = 'spend'"
        " AND served_at >= :since AND served_at < :until",
        since=datetime.fromisoformat(window["since"]),
        until=datetime.fromisoformat(window["until"]),
    )
    assert [s["name"] for s in data["mix"]["series"]] == ["p10", "p50", "p90"]
    assert [s["window"] for s in data["mix"]["series"]] == pytest.approx(quantiles)
    errors = {"labelled": 40, "served_mae": 2.5, "candidate_mae": 1.25}
    errors |= {"served_rmse": 3.0, "candidate_rmse": 1.5}
    with engine.begin() as connection:
        connection.execute(insert(replays), [replay_row("spend", "errors", now, **errors)])
    with TestClient(create_app(settings)) as client:
        shown = client.get("/dashboard/data", params={"model": "spend"}).json()["replays"]
    assert_replays_are_sqls(engine, "spend", shown)
    assert [(r["served_mae"], r["candidate_mae"], r["served_accuracy"]) for r in shown["runs"]] == [
        (2.5, 1.25, None)
    ]


def replay_row(model: str, replay_id: str, finished_at: datetime, **figures: Any) -> dict[str, Any]:
    """A `replays` row as `make replay` writes it; `figures` replace its counts and errors."""
    return {
        "replay_id": replay_id,
        "model_name": model,
        "candidate_version": "2",
        "served_version": "1",
        "since": None,
        "until": None,
        "started_at": finished_at - timedelta(seconds=3),
        "finished_at": finished_at,
        "rows": 100,
        "agreed": 90,
        "labelled": 0,
        "served_correct": None,
        "candidate_correct": None,
        "served_mae": None,
        "candidate_mae": None,
        "served_rmse": None,
        "candidate_rmse": None,
        **figures,
    }


def moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def assert_replays_are_sqls(engine: Engine, model: str, shown: dict[str, Any]) -> None:
    """The panel's rows are the model's newest REPLAYS rows of `replays`, with their shares."""
    expected = sql(
        engine,
        "SELECT replay_id, finished_at, candidate_version, served_version, since, until, rows,"
        " agreed, labelled,"
        " CASE WHEN rows > 0 THEN agreed::float8 / rows END,"
        " CASE WHEN labelled > 0 THEN served_correct::float8 / labelled END,"
        " CASE WHEN labelled > 0 THEN candidate_correct::float8 / labelled END,"
        " served_mae, candidate_mae, served_rmse, candidate_rmse"
        " FROM replays WHERE model_name = :model"
        " ORDER BY finished_at DESC, replay_id, served_version LIMIT :limit",
        model=model,
        limit=REPLAYS,
    )
    assert shown["available"]
    runs = shown["runs"]
    assert len(runs) == len(expected)
    for run, row in zip(runs, expected, strict=True):
        (replay_id, finished_at, candidate, served, since, until, *counts) = row
        assert (run["replay_id"], run["candidate_version"], run["served_version"]) == (
            replay_id,
            candidate,
            served,
        )
        assert [moment(run[k]) for k in ("finished_at", "since", "until")] == [
            finished_at,
            since,
            until,
        ]
        names = ["rows", "agreed", "labelled", "agreement", "served_accuracy"]
        names += ["candidate_accuracy", "served_mae", "candidate_mae", "served_rmse"]
        names += ["candidate_rmse"]
        for name, value in zip(names, counts, strict=True):
            assert close(run[name], value), (name, run[name], value)


def test_the_replays_are_what_sql_says(
    client: TestClient, engine: Engine, settings: ApiSettings, ledger: datetime
) -> None:
    assert client.get("/dashboard/data").json()["replays"] == {"available": True, "runs": []}
    # older replays than the bound shows, and another model's, newer than all
    older = [
        replay_row("iris", f"old-{n}", ledger - timedelta(days=1, minutes=n), labelled=10)
        | {"served_correct": 6 + n % 3, "candidate_correct": 7, "since": ledger - timedelta(days=2)}
        for n in range(REPLAYS + 2)
    ]
    others = [replay_row("spend", "other", ledger + timedelta(days=1), served_mae=1.5)]
    with engine.begin() as connection:
        connection.execute(insert(replays), older + others)
    # and a replay of iris/1 through the ledger's rows: served by 1 and by 2, a third labelled
    report = replay(settings, engine, "iris", "1")
    assert [v.served_version for v in report.versions] == ["1", "2"]

    shown = client.get("/dashboard/data").json()["replays"]
    assert_replays_are_sqls(engine, "iris", shown)
    runs = shown["runs"]
    assert len(runs) == REPLAYS
    assert [r["replay_id"] for r in runs[:2]] == [report.replay_id] * 2
    assert [r["replay_id"] for r in runs[2:]] == [f"old-{n}" for n in range(REPLAYS - 2)]
    newest = runs[0]
    assert newest["served_version"] == "1"
    assert 0 < newest["agreement"] < 1
    assert newest["labelled"] > 0
    assert newest["served_accuracy"] is not None


def test_the_backlog_is_the_streams(
    client: TestClient, settings: ApiSettings, redis_client: redis.Redis
) -> None:
    assert client.get("/dashboard/data").json()["ledger"]["backlog"] is None  # no worker yet
    redis_client.xgroup_create(settings.ledger_stream, settings.ledger_group, id="0", mkstream=True)
    redis_client.xadd(settings.ledger_stream, {"x": "1"})
    backlog = client.get("/dashboard/data").json()["ledger"]["backlog"]
    assert (backlog["waiting"], backlog["unread"], backlog["pending"]) == (1, 1, 0)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"model": "nope"}, 404),
        ({"model": "iris", "version": "7"}, 404),
        ({"model": "../etc"}, 422),
        ({"minutes": 4}, 422),
        ({"minutes": 7 * 24 * 60 + 1}, 422),
    ],
)
def test_bad_choices_are_refused(client: TestClient, params: dict[str, Any], status: int) -> None:
    assert client.get("/dashboard/data", params=params).status_code == status


def test_the_page_and_its_files_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert "<script>" not in page.text  # every script is a file of this origin
    for path, asset in STATIC_FILES.items():
        assert f"/dashboard/static/{path}" in page.text or path == "favicon.svg"
        response = client.get(f"/dashboard/static/{path}")
        assert response.status_code == 200
        assert response.content == asset.body
        again = client.get(f"/dashboard/static/{path}", headers={"If-None-Match": asset.etag})
        assert again.status_code == 304
    assert client.get("/dashboard/static/../app.py").status_code == 404
    assert client.get("/dashboard/static/uplot/README.md").status_code == 404
    # without keys the login is no step
    login = client.get("/dashboard/login", follow_redirects=False)
    assert (login.status_code, login.headers["location"]) == (303, "/dashboard")


# ---- who may open it -------------------------------------------------------------------------


@pytest.fixture
def guarded(settings: ApiSettings, redis_client: redis.Redis) -> Iterator[TestClient]:
    keyed = settings.model_copy(
        update={"api_keys": SecretStr(f"{KEY},other-key-2"), "metrics_key": SecretStr(METRICS_KEY)}
    )
    with TestClient(create_app(keyed), follow_redirects=False) as client:
        yield client


def test_a_browser_without_a_key_is_sent_to_the_login_form(guarded: TestClient) -> None:
    page = guarded.get("/dashboard", params={"minutes": 15})
    assert (page.status_code, page.headers["location"]) == (303, "/dashboard/login?minutes=15")
    form = guarded.get("/dashboard/login")
    assert form.status_code == 200
    assert '<form method="post">' in form.text
    assert form.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    for path in ("/dashboard/data", "/dashboard/static/dashboard.js", "/dashboard/static/x"):
        assert guarded.get(path).status_code == 401, path
    # what the form loads, and no more
    assert guarded.get("/dashboard/static/dashboard.css").status_code == 200


def test_the_login_sets_a_cookie_that_opens_the_dashboard_only(guarded: TestClient) -> None:
    wrong = guarded.post("/dashboard/login", data={"key": "not-a-key"})
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    assert "set-cookie" not in wrong.headers
    metrics_only = guarded.post("/dashboard/login", data={"key": METRICS_KEY})
    assert metrics_only.status_code == 401

    response = guarded.post("/dashboard/login", data={"key": KEY})
    assert (response.status_code, response.headers["location"]) == (303, "/dashboard")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{DASHBOARD_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/dashboard" in cookie
    assert KEY not in cookie  # a token derived from the key, not the key
    token = guarded.cookies[DASHBOARD_COOKIE]

    for path in ("/dashboard", "/dashboard/data", "/dashboard/static/dashboard.js"):
        assert guarded.get(path).status_code == 200, path
    # the cookie is not a key anywhere else, nor the token a bearer key
    assert (
        guarded.get("/v1/models", headers={"Cookie": f"{DASHBOARD_COOKIE}={token}"}).status_code
        == 401
    )
    assert (
        guarded.get("/dashboard/data", headers={"Authorization": f"Bearer {token}", "Cookie": ""})
    ).status_code == 401
    guarded.cookies.clear()
    assert guarded.get("/dashboard/data", headers=BEARER).status_code == 200
    forged = {"Cookie": f"{DASHBOARD_COOKIE}={token[:-1]}0"}
    assert guarded.get("/dashboard/data", headers=forged).status_code == 401


def test_a_key_in_the_url_logs_in_and_leaves_the_url(guarded: TestClient) -> None:
    page = guarded.get("/dashboard", params={"key": KEY, "minutes": 360})
    assert page.status_code == 303
    login = guarded.get(page.headers["location"])
    assert (login.status_code, login.headers["location"]) == (303, "/dashboard?minutes=360")
    assert guarded.get("/dashboard/data", params={"minutes": 360}).status_code == 200


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM} (the tests image has it)")
def test_a_browser_logs_in_with_the_form(settings: ApiSettings, redis_client: redis.Redis) -> None:
    keyed = settings.model_copy(update={"api_keys": SecretStr(KEY)})
    with serving(keyed) as address, chromium() as browser:
        origin = f"http://{address}"
        page = browser.new_page()
        watched = Watched(origin)
        watched.watch(page)
        page.goto(f"{origin}/dashboard?minutes=15")
        assert page.url == f"{origin}/dashboard/login?minutes=15"
        page.fill("#key", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("#dashboard[data-state=ready]", timeout=15_000)
        assert page.url == f"{origin}/dashboard?minutes=15"
        assert page.locator("#window-label").inner_text() == "in the last 15 minutes"
        assert page.locator("#traffic-total").get_attribute("data-value") == "0"
        assert page.evaluate("() => document.cookie") == ""  # HttpOnly: no script reads it
        watched.assert_clean()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no {CHROMIUM} (the tests image has it)")
def test_a_regressor_is_drawn_with_its_values_and_errors(
    engine: Engine, settings: ApiSettings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from berth_api.bundles.package import package
    from tests.models import save, spend_regressor

    package(save(spend_regressor(), tmp_path / "r.joblib"), settings.models_dir, "spend", "1")
    now = datetime.now(UTC)
    rows = served_rows(now, 30, model="spend")
    for i, row in enumerate(rows):
        row["prediction"] = 10.0 + i % 7
    store(engine, rows)
    with engine.begin() as connection:
        connection.execute(
            insert(feedback),
            [
                {
                    "feedback_id": f"fb-spend-{i}",
                    "request_id": row["request_id"],
                    "row_index": row["row_index"],
                    "actual": row["prediction"] + 1.5,
                    "received_at": now,
                    "source": "api",
                }
                for i, row in enumerate(rows[::2])
            ],
        )
    with serving(settings) as address, chromium() as browser:
        origin = f"http://{address}"
        wait_for_version_record(engine, "spend")
        page = browser.new_page()
        watched = Watched(origin)
        watched.watch(page)
        page.goto(f"{origin}/dashboard?model=spend&version=1")
        page.wait_for_selector("#dashboard[data-state=ready]", timeout=15_000)
        page.wait_for_function("() => document.querySelectorAll('.chart canvas').length >= 6")
        names = page.locator("#mix-figures li").evaluate_all(
            "items => items.map(i => i.dataset.name)"
        )
        assert names == ["p10", "p50", "p90"]
        mae = page.locator("#quality-figures li[data-name=mae]").get_attribute("data-value")
        assert float(str(mae)) == pytest.approx(1.5)
        assert page.locator("#model").input_value() == "spend/1"
        watched.assert_clean()
