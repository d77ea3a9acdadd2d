"""The dashboard in a real browser against the running stack: Debian's chromium, driven by
playwright (never `playwright install`: the browser is the distribution's), loads /dashboard,
and every figure the page shows is compared with SQL over the same ledger. The page must make
no request but to its own origin, fail none, and log no error or warning; a screenshot is saved
to /artifacts/dashboard.png when that directory exists (`make test` mounts test-artifacts/).
The replays panel is checked against a row this test adds to `replays` (as `make replay` would)."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page
from sqlalchemy import Engine, text

from berth_api.dashboard.figures import REPLAYS
from berth_common.backlog import read_backlog
from berth_common.settings import CommonSettings
from tests.browser import Watched, chromium
from tests.e2e.stack import wait_until
from tests.e2e.test_stack import ledger_drained

ARTIFACTS = Path("/artifacts")
STORED_TIMEOUT_SECONDS = 30.0
# the page refreshes every REFRESH seconds in these tests (15 by default)
REFRESH = 2
FEEDBACK_PATH = "/v1/predictions/{request_id}/feedback"
SCOPE = (
    "FROM predictions WHERE model_name = 'iris' AND model_version = '1'"
    " AND served_at >= :since AND served_at < :until"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as browser:
        yield browser


def sql(db: Engine, query: str, **parameters: Any) -> list[Any]:
    with db.connect() as connection:
        return list(connection.execute(text(query), parameters))


def iris_like(rng: random.Random) -> list[float]:
    """Rows around iris' own, petal length shifted up: the dashboard has drift to show."""
    return [
        round(rng.uniform(4.5, 7.5), 1),
        round(rng.uniform(2.2, 4.0), 1),
        round(rng.uniform(1.0, 6.5) + 3, 1),
        round(rng.uniform(0.1, 2.4), 1),
    ]


def send_traffic(api: httpx.Client, requests: int, seed: int) -> dict[str, list[Any]]:
    """Requests of one to four rows, a third of them repeats (cache hits); their labels."""
    rng = random.Random(seed)
    sent: dict[str, list[Any]] = {}
    earlier: list[list[list[float]]] = []
    for _ in range(requests):
        if earlier and rng.random() < 0.33:
            rows = rng.choice(earlier)
        else:
            rows = [iris_like(rng) for _ in range(rng.randint(1, 4))]
            earlier.append(rows)
        request_id = f"e2e-dash-{uuid.uuid4().hex}"
        response = api.post(
            "/v1/models/iris/predict",
            json={"instances": rows},
            headers={"X-Request-ID": request_id},
        )
        assert response.status_code == 200, response.text
        sent[request_id] = [p["label"] for p in response.json()["predictions"]]
    return sent


def send_feedback(api: httpx.Client, db: Engine, sent: dict[str, list[Any]]) -> int:
    """Actuals for every other request, a fifth of them wrong; through the API when it takes
    feedback, else written to the table the worker would write them to."""
    other = {"setosa": "virginica", "versicolor": "setosa", "virginica": "versicolor"}
    actuals = {
        request_id: [label if i % 5 else other[label] for label in labels]
        for i, (request_id, labels) in enumerate(list(sent.items())[::2])
    }
    if FEEDBACK_PATH in api.get("/openapi.json").json()["paths"]:
        for request_id, values in actuals.items():
            path = FEEDBACK_PATH.format(request_id=request_id)
            response = api.post(path, json={"actuals": values})
            assert response.status_code == 202, response.text
    else:
        with db.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO feedback (feedback_id, request_id, row_index, actual,"
                    " received_at, source) VALUES (:id, :request_id, :row_index,"
                    " to_jsonb(CAST(:actual AS text)), now(), 'api')"
                ),
                [
                    {"id": uuid.uuid4().hex, "request_id": r, "row_index": i, "actual": v}
                    for r, values in actuals.items()
                    for i, v in enumerate(values)
                ],
            )
    return sum(len(values) for values in actuals.values())


def wait_stored(db: Engine, sent: dict[str, list[Any]], labelled: int) -> None:
    rows = sum(len(labels) for labels in sent.values())
    ids = list(sent)

    def stored() -> bool:
        [(predictions, feedback)] = sql(
            db,
            "SELECT (SELECT count(*) FROM predictions WHERE request_id = ANY(:ids)),"
            " (SELECT count(DISTINCT (request_id, row_index)) FROM feedback"
            "  WHERE request_id = ANY(:ids))",
            ids=ids,
        )
        return bool(predictions == rows and feedback >= labelled)

    wait_until(stored, what="the traffic and its feedback in PostgreSQL", timeout=30)


def add_replay(db: Engine) -> str:
    """A replay of iris/2 on what iris/1 served, finished now, as `make replay` stores it."""
    replay_id = f"e2e-dash-{uuid.uuid4().hex}"
    with db.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO replays (replay_id, model_name, candidate_version, served_version,"
                " started_at, finished_at, rows, agreed, labelled, served_correct,"
                " candidate_correct) VALUES (:id, 'iris', '2', '1',"
                " now() - interval '3 seconds', now(), 240, 228, 80, 64, 70)"
            ),
            {"id": replay_id},
        )
    return replay_id


def figure(page: Page, selector: str) -> float | None:
    value = page.locator(selector).get_attribute("data-value")
    return None if value in (None, "") else float(value)


def close(shown: float | None, expected: Any) -> bool:
    if shown is None or expected is None:
        return shown is None and expected is None
    return math.isclose(shown, float(expected), rel_tol=1e-9, abs_tol=1e-9)


def shown_window(page: Page) -> dict[str, datetime]:
    dataset = page.locator("#dashboard")
    return {
        "since": datetime.fromisoformat(str(dataset.get_attribute("data-since"))),
        "until": datetime.fromisoformat(str(dataset.get_attribute("data-until"))),
    }


def test_the_dashboard_shows_what_the_ledger_holds(
    api: httpx.Client,
    api_url: str,
    browser: Browser,
    stack_db: Engine,
    stack_redis: redis.Redis,
    stack_settings: CommonSettings,
) -> None:
    sent = send_traffic(api, 120, seed=7)
    labelled = send_feedback(api, stack_db, sent)
    wait_stored(stack_db, sent, labelled)
    wait_until(
        lambda: ledger_drained(stack_redis, stack_settings),
        what="the ledger stream drained",
        timeout=STORED_TIMEOUT_SECONDS,
    )

    replay_id = add_replay(stack_db)

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    watched = Watched(api_url)
    watched.watch(page)
    page.goto(f"{api_url}/dashboard?refresh={REFRESH}")
    page.wait_for_selector("#dashboard[data-state=ready]", timeout=15_000)
    # (functions, not expressions: the page's policy forbids evaluating strings)
    page.wait_for_function("() => document.querySelectorAll('.chart canvas').length === 8")

    # the headlines
    window = shown_window(page)
    assert page.locator("#dashboard").get_attribute("data-model") == "iris"
    [(total, hits, p50, p99, lag)] = sql(
        stack_db,
        "SELECT count(*), count(*) FILTER (WHERE cached),"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE row_index = 0),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE row_index = 0),"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - served_at))"
        f" {SCOPE}",
        **window,
    )
    assert total >= sum(len(labels) for labels in sent.values())
    assert page.locator("#traffic-total").inner_text() == f"{total:,}"
    assert figure(page, "#traffic-total") == total
    assert "in the last hour" in page.locator("#panel-traffic h2").inner_text()
    assert close(figure(page, "#cache-hit-rate"), hits / total)
    assert page.locator("#cache-hit-rate").inner_text() == f"{100 * hits / total:.1f}%"
    assert close(figure(page, "#latency-p50"), p50)
    assert close(figure(page, "#latency-p99"), p99)
    assert close(figure(page, "#ledger-lag"), lag)
    backlog = read_backlog(stack_redis, stack_settings.ledger_stream, stack_settings.ledger_group)
    assert figure(page, "#ledger-backlog") == backlog.waiting == 0

    # the class mix beside the training mix
    shares = dict(
        sql(stack_db, f"SELECT prediction #>> '{{}}', count(*) {SCOPE} GROUP BY 1", **window)
    )
    training = dict(
        sql(
            stack_db,
            "SELECT category #>> '{}', sum(expected) FROM reference_bins"
            " WHERE model_name = 'iris' AND model_version = '1' AND subject = 'prediction'"
            " GROUP BY 1",
        )
    )
    mix = page.locator("#mix-figures li")
    assert mix.count() == 3
    for i in range(3):
        item = mix.nth(i)
        label = str(item.get_attribute("data-name"))
        assert close(float(str(item.get_attribute("data-value"))), shares.get(label, 0) / total)
        shown_training = item.get_attribute("data-training")
        assert close(float(shown_training) if shown_training else None, training.get(label))

    # what the charts draw: predictions per minute, minute by minute
    per_minute = dict(
        sql(
            stack_db,
            "SELECT extract(epoch FROM date_trunc('minute', served_at))::bigint, count(*)"
            f" {SCOPE} GROUP BY 1",
            **window,
        )
    )
    xs, ys = page.evaluate("() => window.berthDashboard.charts.traffic.plot.data")
    assert len(xs) in (60, 61)
    assert {int(x): y for x, y in zip(xs, ys, strict=True) if y} == per_minute

    # quality from feedback, and drift, from the views
    [(accuracy, coverage, day_labelled)] = sql(
        stack_db,
        "SELECT accuracy, label_coverage, labelled FROM model_quality_daily"
        " WHERE model_name = 'iris' AND model_version = '1'"
        " AND day = (now() AT TIME ZONE 'UTC')::date",
    )
    assert day_labelled >= labelled
    assert close(figure(page, "#quality-figures li[data-name=accuracy]"), accuracy)
    assert close(figure(page, "#quality-figures li[data-name=label_coverage]"), coverage)
    assert accuracy is not None
    drifting = sql(
        stack_db,
        "SELECT feature, psi FROM feature_drift WHERE model_name = 'iris' AND model_version = '1'"
        " AND day = (now() AT TIME ZONE 'UTC')::date ORDER BY psi DESC, feature LIMIT 5",
    )
    shown = page.locator("#drift-figures li")
    assert [shown.nth(i).get_attribute("data-feature") for i in range(shown.count())] == [
        feature for feature, _ in drifting
    ]
    for i, (_, psi) in enumerate(drifting):
        assert close(figure(page, f"#drift-figures li >> nth={i}"), psi)
    if training:  # the demo bundle carries a training reference
        assert f"{drifting[0][0]} drifts most" in page.locator("#drift-title").inner_text()

    # the replays: the newest in the caption, the latest REPLAYS rows in the chart, oldest left
    replayed = sql(
        stack_db,
        "SELECT replay_id, served_version, rows, agreed::float8 / nullif(rows, 0),"
        " served_correct::float8 / nullif(labelled, 0),"
        " candidate_correct::float8 / nullif(labelled, 0)"
        " FROM replays WHERE model_name = 'iris'"
        " ORDER BY finished_at DESC, replay_id, served_version LIMIT :limit",
        limit=REPLAYS,
    )
    assert replayed[0][0] == replay_id
    caption = page.locator("#replays-figures li")
    assert caption.count() == 1
    assert caption.first.get_attribute("data-replay") == replay_id
    assert caption.first.get_attribute("data-served") == "1"
    assert close(figure(page, "#replays-figures li[data-served='1']"), 228 / 240)
    score = caption.first.get_attribute("data-candidate-score")
    assert close(float(str(score)), 70 / 80)
    assert "agreement 95.0%" in caption.first.inner_text()
    xs, agreement, served, candidate = page.evaluate(
        "() => window.berthDashboard.charts.replays.plot.data"
    )
    assert xs == list(range(len(replayed)))
    drawn = zip(agreement, served, candidate, strict=True)
    for percents, row in zip(drawn, reversed(replayed), strict=True):
        for percent, share in zip(percents, row[3:], strict=True):
            assert close(None if percent is None else percent / 100, share)

    if ARTIFACTS.is_dir():
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # it refreshes itself, without reloading the page
    page.evaluate("() => { window.sameDocument = true; }")
    more = send_traffic(api, 10, seed=8)
    wait_stored(stack_db, more, 0)
    wait_until(
        lambda: ledger_drained(stack_redis, stack_settings),
        what="the ledger stream drained",
        timeout=STORED_TIMEOUT_SECONDS,
    )
    # a refresh that started after the rows were stored has ended
    refreshes = int(str(page.locator("#dashboard").get_attribute("data-refreshes")))
    page.wait_for_function(
        "(n) => Number(document.getElementById('dashboard').dataset.refreshes) >= n",
        arg=refreshes + 2,
        timeout=4 * REFRESH * 1000,
    )
    window = shown_window(page)
    [(total_now,)] = sql(stack_db, f"SELECT count(*) {SCOPE}", **window)
    assert figure(page, "#traffic-total") == total_now > total
    assert page.evaluate("() => window.sameDocument") is True

    context.close()
    watched.assert_clean()
    with stack_db.begin() as connection:
        connection.execute(text("DELETE FROM replays WHERE replay_id = :id"), {"id": replay_id})
