"""Ground truth through the API: what is checked against the model that served a request, when a
request is unknown (404) or may still be on its way (202, checked by the worker), bulk uploads,
and the durable path the feedback takes (the stream, or the spool while Redis is down)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sklearn.linear_model import LogisticRegression
from sqlalchemy import Engine, text

from berth_api.app import create_app
from berth_api.bundles.package import package
from berth_api.ledger.spool import LedgerSpool
from berth_common.ledger import decode_feedback_entry, is_feedback_entry
from berth_common.settings import ApiSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter
from tests.models import save, spend_regressor

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
JSONL = "application/x-ndjson"


def flag_classifier() -> LogisticRegression:
    """A classifier whose classes are the integers 0 and 1."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 2))
    return LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, iris_bundle_source: Path) -> Path:
    """iris/1, spend/1 (a regressor) and flag/1 (integer classes), packaged once."""
    models = tmp_path_factory.mktemp("feedback-models")
    shutil.copytree(iris_bundle_source / "iris", models / "iris")
    work = tmp_path_factory.mktemp("feedback-work")
    package(save(spend_regressor(), work / "spend.joblib"), models, "spend", "1", report=str)
    package(save(flag_classifier(), work / "flag.joblib"), models, "flag", "1", report=str)
    return models


@pytest.fixture
def settings(api_settings: ApiSettings, bundles: Path, tmp_path: Path) -> ApiSettings:
    models = tmp_path / "served"
    shutil.copytree(bundles, models)
    return api_settings.model_copy(update={"models_dir": models})


@pytest.fixture
def worker(
    worker_settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> LedgerConsumer:
    return LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=2))


def predict(client: TestClient, request_id: str, path: str, rows: list[Any]) -> None:
    response = client.post(path, json={"instances": rows}, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text


def run_until(worker: LedgerConsumer, done: Callable[[], bool], timeout: float = 30) -> None:
    """Runs the worker until `done`: deferred entries come back once idle long enough."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the worker never got there"
        worker.run(until_idle=True)
        time.sleep(0.1)


def feedback_entries(client: redis.Redis, settings: ApiSettings) -> list[list[Any]]:
    entries = client.xrange(settings.ledger_stream)
    return [
        [r.model_dump() for r in decode_feedback_entry(fields)]
        for _, fields in entries
        if is_feedback_entry(fields)
    ]


def stored(engine: Engine, table: str = "feedback") -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                text(
                    f"SELECT request_id, row_index, actual, source FROM {table} "
                    "ORDER BY request_id, row_index, received_at"
                )
            )
        ]


def dead_letters(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT error FROM ledger_dead_letters")).scalars())


def test_feedback_for_a_stored_prediction_is_checked_and_stored(
    client: TestClient,
    worker: LedgerConsumer,
    redis_client: redis.Redis,
    settings: ApiSettings,
    engine: Engine,
) -> None:
    predict(client, "order-1", "/predict", [SETOSA, VIRGINICA])
    worker.run(until_idle=True)

    response = client.post(
        "/v1/predictions/order-1/feedback", json={"actuals": ["setosa", "versicolor"]}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["validated"] is True
    assert body["model"] == {"name": "iris", "version": "1"}
    assert [(r["row_index"], r["actual"]) for r in body["rows"]] == [
        (0, "setosa"),
        (1, "versicolor"),
    ]
    [entry] = feedback_entries(redis_client, settings)
    assert [r["feedback_id"] for r in entry] == [r["feedback_id"] for r in body["rows"]]
    assert {r["source"] for r in entry} == {"api"}

    # a correction of row 1 by row index, and the same value of row 0 again
    fixed = client.post(
        "/v1/predictions/order-1/feedback",
        json={
            "rows": [{"row_index": 1, "actual": "virginica"}, {"row_index": 0, "actual": "setosa"}]
        },
    )
    assert fixed.status_code == 202, fixed.text
    worker.run(until_idle=True)
    assert stored(engine) == [
        ("order-1", 0, "setosa", "api"),
        ("order-1", 1, "versicolor", "api"),
        ("order-1", 1, "virginica", "api"),
    ]
    assert stored(engine, "feedback_duplicates") == [("order-1", 0, "setosa", "api")]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"actuals": ["setosa"], "rows": [{"row_index": 0, "actual": "setosa"}]}, "body", "either"),
        ({}, "body", "either"),
        ({"actuals": []}, "actuals", "at least 1"),
        ({"actuals": ["setosa"]}, "actuals", "has 2 rows"),
        ({"actuals": ["setosa", "tulip"]}, "actuals[1]", "not one of the model's classes"),
        ({"actuals": ["setosa", None]}, "actuals[1]", "not null"),
        ({"actuals": ["setosa", ["virginica"]]}, "actuals[1]", "not null, a list"),
        ({"actuals": ["setosa", float("nan")]}, "actuals[1]", "finite"),
        ({"rows": [{"row_index": 2, "actual": "setosa"}]}, "rows[0].row_index", "out of range"),
        ({"rows": [{"row_index": -1, "actual": "setosa"}]}, "rows[0].row_index", "greater than"),
        ({"rows": [{"row_index": "1", "actual": "setosa"}]}, "rows[0].row_index", "integer"),
        (
            {"rows": [{"row_index": 1, "actual": "setosa"}, {"row_index": 1, "actual": "setosa"}]},
            "body",
            "more than once",
        ),
        ({"rows": [{"row_index": 0}]}, "rows[0].actual", "required"),
        ({"rows": [{"row_index": 0, "actual": 1, "extra": 2}]}, "rows[0].extra", "not permitted"),
        ({"actuals": ["setosa", "x" * 1001]}, "actuals[1]", "longer than 1000"),
        ({"actuals": ["setosa", "nul\x00"]}, "actuals[1]", "NUL"),
    ],
)
def test_bodies_that_cannot_be_feedback_are_refused_naming_the_field(
    client: TestClient,
    worker: LedgerConsumer,
    redis_client: redis.Redis,
    settings: ApiSettings,
    body: dict[str, Any],
    field: str,
    message: str,
) -> None:
    predict(client, "order-2", "/predict", [SETOSA, VIRGINICA])
    worker.run(until_idle=True)
    response = client.post(
        "/v1/predictions/order-2/feedback",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == "urn:berth:problem:invalid-input"
    assert any(e["field"] == field and message in e["message"] for e in problem["errors"]), problem
    # the submitted value is never echoed
    assert "tulip" not in response.text
    assert feedback_entries(redis_client, settings) == []


def test_the_body_itself_must_be_json(client: TestClient) -> None:
    path = "/v1/predictions/order-3/feedback"
    form = client.post(path, content=b"actuals=1", headers={"content-type": "text/plain"})
    assert form.status_code == 415, form.text
    broken = client.post(path, content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400, broken.text
    surrogate = client.post(
        path, content=b'{"actuals": ["\\ud800"]}', headers={"content-type": "application/json"}
    )
    assert surrogate.status_code == 422, surrogate.text
    assert "surrogate" in surrogate.text
    bad_id = client.post("/v1/predictions/not%20an%20id/feedback", json={"actuals": [1]})
    assert bad_id.status_code == 422, bad_id.text


def test_labels_are_kept_typed_as_the_models_classes(
    client: TestClient, worker: LedgerConsumer, engine: Engine
) -> None:
    predict(client, "flag-1", "/v1/models/flag/predict", [[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]])
    predict(client, "spend-1", "/v1/models/spend/predict", [[3.0], [24.0]])
    worker.run(until_idle=True)

    flags = client.post("/v1/predictions/flag-1/feedback", json={"actuals": ["1", 0, 1.0]})
    assert flags.status_code == 202, flags.text
    assert [r["actual"] for r in flags.json()["rows"]] == [1, 0, 1]
    for wrong, reason in ((True, "not one of"), ("yes", "not one of"), (2, "not one of")):
        refused = client.post(
            "/v1/predictions/flag-1/feedback", json={"rows": [{"row_index": 0, "actual": wrong}]}
        )
        assert refused.status_code == 422, refused.text
        assert reason in refused.text

    spend = client.post("/v1/predictions/spend-1/feedback", json={"actuals": [51.5, "49"]})
    assert spend.status_code == 202, spend.text
    assert [r["actual"] for r in spend.json()["rows"]] == [51.5, 49]
    for wrong in ("setosa", True, "1e400", "inf"):
        refused = client.post(
            "/v1/predictions/spend-1/feedback", json={"rows": [{"row_index": 0, "actual": wrong}]}
        )
        assert refused.status_code == 422, (wrong, refused.text)
        assert "number" in refused.json()["detail"]

    worker.run(until_idle=True)
    assert [row[:3] for row in stored(engine)] == [
        ("flag-1", 0, 1),
        ("flag-1", 1, 0),
        ("flag-1", 2, 1),
        ("spend-1", 0, 51.5),
        ("spend-1", 1, 49),
    ]


def test_an_unknown_request_is_a_404_once_the_ledger_can_tell(
    client: TestClient, worker: LedgerConsumer, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    # nothing anywhere: no stream yet
    assert client.post("/v1/predictions/nobody/feedback", json={"actuals": [1]}).status_code == 404
    predict(client, "order-4", "/predict", [SETOSA])
    # order-4 waits in the stream, unread: on its way, so accepted unchecked; nobody is not
    early = client.post("/v1/predictions/order-4/feedback", json={"actuals": ["setosa"]})
    assert early.status_code == 202, early.text
    assert early.json()["validated"] is False
    assert early.json()["model"] is None
    missing = client.post("/v1/predictions/nobody/feedback", json={"actuals": ["setosa"]})
    assert missing.status_code == 404, missing.text
    assert missing.json()["type"] == "urn:berth:problem:prediction-not-found"

    # delivered to a worker and not acknowledged (pending): still on its way
    worker.ensure_group()
    predict(client, "order-5", "/predict", [SETOSA])
    redis_client.xreadgroup(
        settings.ledger_group, "elsewhere", {settings.ledger_stream: ">"}, count=100
    )
    pending = client.post("/v1/predictions/order-5/feedback", json={"actuals": ["setosa"]})
    assert pending.status_code == 202, pending.text
    assert pending.json()["validated"] is False


def test_feedback_before_its_prediction_is_stored_after_it(
    client: TestClient, worker: LedgerConsumer, engine: Engine
) -> None:
    predict(client, "order-6", "/predict", [SETOSA, VIRGINICA])
    accepted = client.post(
        "/v1/predictions/order-6/feedback", json={"rows": [{"row_index": 1, "actual": "virginica"}]}
    )
    assert accepted.json()["validated"] is False
    # the worker reads both in one batch: the prediction first, then its feedback
    outcome = worker.run(until_idle=True)
    assert (outcome.acked, outcome.deferred) == (2, 0)
    assert stored(engine) == [("order-6", 1, "virginica", "api")]


def versions_recorded(engine: Engine) -> bool:
    """Whether the API has recorded the versions it loaded (in the background, at start-up):
    until then the worker knows a version's task, not its classes."""
    with engine.connect() as connection:
        return bool(connection.execute(text("SELECT count(*) FROM model_versions")).scalar_one())


def test_unchecked_feedback_the_model_cannot_have_is_dead_lettered_with_the_reason(
    client: TestClient, worker: LedgerConsumer, engine: Engine
) -> None:
    run_until(worker, lambda: versions_recorded(engine))
    predict(client, "order-7", "/predict", [SETOSA])
    client.post("/v1/predictions/order-7/feedback", json={"actuals": ["tulip"]})
    client.post(
        "/v1/predictions/order-7/feedback", json={"rows": [{"row_index": 3, "actual": "setosa"}]}
    )
    worker.run(until_idle=True)
    assert stored(engine) == []
    errors = sorted(dead_letters(engine))
    assert len(errors) == 2
    assert "not one of the model's classes" in errors[0]
    assert "row_index out of range: the request has 1 rows" in errors[1]


def test_while_redis_is_down_feedback_is_spooled_then_stored(
    settings: ApiSettings,
    client: TestClient,
    worker: LedgerConsumer,
    redis_client: redis.Redis,
    engine: Engine,
) -> None:
    predict(client, "order-8", "/predict", [SETOSA])
    worker.run(until_idle=True)
    # an API process of its own, with a spool of its own, that cannot reach Redis
    outage_spool = settings.spool_dir.parent / "outage-spool"
    down = settings.model_copy(
        update={"redis_port": 1, "spool_replay_interval_seconds": 3600, "spool_dir": outage_spool}
    )
    with TestClient(create_app(down), raise_server_exceptions=False) as outage:
        response = outage.post("/v1/predictions/order-8/feedback", json={"actuals": ["setosa"]})
        # the database still says what served it: checked, and spooled
        assert response.status_code == 202, response.text
        assert response.json()["validated"] is True
        # a request the database does not hold may be spooled somewhere: not a 404
        unknown = outage.post("/v1/predictions/order-9/feedback", json={"actuals": ["setosa"]})
        assert unknown.status_code == 202, unknown.text
        assert unknown.json()["validated"] is False
    spool = LedgerSpool(outage_spool)
    assert spool.count_entries() == 2
    # once it reaches Redis, it moves its spool into the stream
    back = settings.model_copy(update={"spool_dir": outage_spool})
    with TestClient(create_app(back), raise_server_exceptions=False):
        deadline = time.monotonic() + 30
        while spool.has_entries() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not spool.has_entries()
    worker.run(until_idle=True)
    assert stored(engine) == [("order-8", 0, "setosa", "api")]
    # order-9 never arrives: its entry waits, is delivered again once it has been idle for
    # WORKER_CLAIM_IDLE_MS, and at the last delivery (WORKER_MAX_DELIVERIES, 2 here) it is
    # dead-lettered saying so
    run_until(worker, lambda: bool(dead_letters(engine)))
    [error] = dead_letters(engine)
    assert "request 'order-9' row 0: the prediction never arrived" in error


def test_the_feedback_paths_need_a_key_when_keys_are_set(
    settings: ApiSettings, redis_client: redis.Redis
) -> None:
    keyed = settings.model_copy(update={"api_keys": SecretStr("key-number-one")})
    with TestClient(create_app(keyed), raise_server_exceptions=False) as guarded:
        one = guarded.post("/v1/predictions/x/feedback", json={"actuals": [1]})
        bulk = guarded.post(
            "/v1/feedback",
            content=b"request_id,row_index,actual\n",
            headers={"content-type": "text/csv"},
        )
        assert (one.status_code, bulk.status_code) == (401, 401)
        allowed = guarded.post(
            "/v1/predictions/x/feedback",
            json={"actuals": [1]},
            headers={"Authorization": "Bearer key-number-one"},
        )
        assert allowed.status_code == 404, allowed.text


# ---- bulk ------------------------------------------------------------------------------------


@pytest.fixture
def labelled(client: TestClient, worker: LedgerConsumer) -> TestClient:
    predict(client, "b-1", "/predict", [SETOSA, VIRGINICA])
    predict(client, "b-2", "/v1/models/spend/predict", [[3.0]])
    worker.run(until_idle=True)
    return client


def test_a_csv_upload_accepts_the_good_lines_and_lists_the_others(
    labelled: TestClient, worker: LedgerConsumer, engine: Engine
) -> None:
    upload = (
        "row_index,request_id,actual\n"  # any column order
        "0,b-1,setosa\n"
        "1,b-1,tulip\n"  # 3: not a class
        "\n"
        "5,b-1,setosa\n"  # 5: no such row
        "0,nobody,setosa\n"  # 6: unknown request
        "0,b-2,42.5\n"
        "0,b-1,virginica\n"  # 8: given on line 2
        "x,b-1,setosa\n"  # 9: not a row index
        '1,b-1,"virginica"\n'  # 10: given on line 3 (refused there)
        "1,b-1\n"  # 11: two values
    )
    response = labelled.post(
        "/v1/feedback", content=upload.encode(), headers={"content-type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["lines"], body["accepted"], body["unvalidated"], body["rejected"]) == (9, 2, 0, 7)
    assert [(p["line"], p["field"]) for p in body["problems"]] == [
        (3, "actual"),
        (5, "row_index"),
        (6, "request_id"),
        (8, "row_index"),
        (9, "row_index"),
        (10, "row_index"),
        (11, "line"),
    ]
    worker.run(until_idle=True)
    assert stored(engine) == [("b-1", 0, "setosa", "bulk"), ("b-2", 0, 42.5, "bulk")]


def test_a_json_lines_upload_and_one_with_nothing_to_accept(labelled: TestClient) -> None:
    lines = [
        {"request_id": "b-1", "row_index": 0, "actual": "setosa"},
        {"request_id": "b-2", "row_index": 0, "actual": "12"},
        {"request_id": "b-2", "row_index": 0, "actual": 13, "extra": 1},
    ]
    upload = "\n".join(json.dumps(line) for line in lines) + "\n[1]\n{bad\n"
    response = labelled.post(
        "/v1/feedback", content=upload.encode(), headers={"content-type": JSONL}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 3)
    assert [p["line"] for p in body["problems"]] == [3, 4, 5]

    nothing = labelled.post(
        "/v1/feedback",
        content=b'{"request_id": "b-1", "row_index": 9, "actual": "setosa"}\n',
        headers={"content-type": "application/jsonl"},
    )
    assert nothing.status_code == 422, nothing.text
    assert nothing.json()["errors"] == [
        {
            "field": "line 1: row_index",
            "message": "row_index is out of range: the request has 2 rows (0 to 1)",
        }
    ]


def test_bulk_uploads_that_cannot_be_read(client: TestClient, settings: ApiSettings) -> None:
    csv = {"content-type": "text/csv"}
    assert client.post("/v1/feedback", content=b"a,b\n1,2\n", headers=csv).status_code == 400
    assert client.post("/v1/feedback", content=b"", headers=csv).status_code == 400
    assert client.post("/v1/feedback", content=b"\xff\xfe", headers=csv).status_code == 400
    assert (
        client.post(
            "/v1/feedback", content=b"x", headers={"content-type": "application/json"}
        ).status_code
        == 415
    )
    assert client.post("/v1/feedback", content=b"x").status_code == 415
    huge = b"request_id,row_index,actual\n" + b"a,0,b\n" * (settings.max_body_bytes // 6)
    assert client.post("/v1/feedback", content=huge, headers=csv).status_code == 413


def test_unknown_requests_in_an_upload_are_unchecked_while_they_may_be_on_their_way(
    client: TestClient, worker: LedgerConsumer, engine: Engine
) -> None:
    predict(client, "b-3", "/predict", [SETOSA])
    response = client.post(
        "/v1/feedback",
        content=b"request_id,row_index,actual\nb-3,0,setosa\nb-4,0,setosa\n",
        headers={"content-type": "text/csv"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["unvalidated"], body["rejected"]) == (1, 1, 1)
    assert body["problems"][0]["line"] == 3
    worker.run(until_idle=True)
    assert stored(engine) == [("b-3", 0, "setosa", "bulk")]


def test_feedback_is_counted_by_source(client: TestClient, labelled: TestClient) -> None:
    client.post("/v1/predictions/b-1/feedback", json={"actuals": ["setosa", "setosa"]})
    client.post(
        "/v1/feedback",
        content=b"request_id,row_index,actual\nb-2,0,1\n",
        headers={"content-type": "text/csv"},
    )
    metrics = client.get("/metrics").text
    assert 'berth_feedback_rows_received_total{source="api"} 2.0' in metrics
    assert 'berth_feedback_rows_received_total{source="bulk"} 1.0' in metrics
