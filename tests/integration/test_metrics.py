"""Prometheus metrics: exact counts summed over every process, the ledger's figures as the worker
stores and as it stops, the access rule for /metrics, the metrics port, and the log fields that
follow a request from the access log to its ledger entry."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine

from berth_api.__main__ import serve_metrics
from berth_api.app import create_app
from berth_common.settings import ApiSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter
from tests.conftest import ROOT
from tests.integration.conftest import serving

ROW = [5.1, 3.5, 1.4, 0.2]
V2 = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": ROW * 2}]}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in found.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def scrape(address: str, headers: dict[str, str] | None = None) -> Samples:
    response = httpx.get(f"http://{address}/metrics", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def quick(caching: ApiSettings, tmp_path: Path) -> ApiSettings:
    return caching.model_copy(
        update={
            "metrics_dir": tmp_path / "shared-metrics",
            "metrics_publish_interval_seconds": 0.1,
            "ledger_gauge_interval_seconds": 0.1,
        }
    )


@pytest.fixture
def two_processes(quick: ApiSettings) -> Iterator[list[str]]:
    """Two servers publishing to one metrics directory: two API processes of one container."""
    with serving(quick) as first, serving(quick) as second:
        yield [first, second]


def test_every_door_counts_exactly_and_every_process_answers_for_all(
    two_processes: list[str], redis_client: redis.Redis
) -> None:
    first, second = two_processes
    before = scrape(first)
    sent = {
        "/predict": 0,
        "/v2/models/{name}/infer": 0,
        "/invocations": 0,
        "/v1/models/{name}:predict": 0,
    }
    for i in range(12):
        address = two_processes[i % 2]
        assert httpx.post(f"http://{address}/predict", json={"features": ROW}).status_code == 200
        sent["/predict"] += 1
        assert httpx.post(f"http://{address}/v2/models/iris/infer", json=V2).status_code == 200
        sent["/v2/models/{name}/infer"] += 1
        body = {"instances": [ROW]}
        assert httpx.post(f"http://{address}/invocations", json=body).status_code == 200
        sent["/invocations"] += 1
        assert httpx.post(f"http://{address}/v1/models/iris:predict", json=body).status_code == 200
        sent["/v1/models/{name}:predict"] += 1
    assert httpx.post(f"http://{first}/predict", json={"features": [1]}).status_code == 422
    rows = 12 * (1 + 2 + 1 + 1)

    def counted(address: str) -> None:
        after = scrape(address)

        def rise(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        for route, count in sent.items():
            assert rise("berth_http_requests_total", route=route, status="200") == count, route
            assert rise("berth_http_request_duration_seconds_count", route=route) >= count
        assert rise("berth_http_requests_total", route="/predict", status="422") == 1
        assert rise("berth_predictions_total", model="iris", version="1") == rows
        assert rise("berth_prediction_top_probability_count") == rows
        assert rise("berth_cache_lookups_total", model="iris") == rows
        assert rise("berth_ledger_records_appended_total", destination="stream") == rows
        assert rise("berth_model_call_rows_sum", model="iris") == rise(
            "berth_cache_lookups_total", result="miss"
        )
        assert total(after, "berth_http_requests_in_progress") >= 1  # this scrape itself

    for address in two_processes:  # each answers for both
        eventually(lambda address=address: counted(address))
    found = scrape(second)
    assert total(found, "berth_model_ready", model="iris", version="1", default="true") == 1
    assert total(found, "berth_build_info", service="api") == 1
    assert total(found, "berth_model_info", model="iris", format="skops") == 1


def test_no_raw_paths_or_ids_in_label_values(client: TestClient) -> None:
    client.get("/v1/predictions/some-request-id")
    client.get("/nowhere/at/all")
    client.post("/v1/models/iris/versions/1/predict", json={"instances": [ROW]})
    found = samples(client.get("/metrics").text)
    routes = {dict(labels)["route"] for _, labels in found if "route" in dict(labels)}
    assert "/v1/predictions/{request_id}" in routes
    assert "/v1/models/{name}/versions/{version}/predict" in routes
    assert "<unmatched>" in routes
    assert not [route for route in routes if "some-request-id" in route or "nowhere" in route]


def test_metrics_take_a_key_when_keys_are_set(
    settings: ApiSettings, redis_client: redis.Redis
) -> None:
    keyed = settings.model_copy(
        update={"api_keys": SecretStr("api-key-one"), "metrics_key": SecretStr("scraper-key-1")}
    )
    with TestClient(create_app(keyed), raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        scraper = {"Authorization": "Bearer scraper-key-1"}
        assert client.get("/metrics", headers=scraper).status_code == 200
        assert (
            client.get("/metrics", headers={"Authorization": "Bearer api-key-one"}).status_code
            == 200
        )
        # the scraper's key is good for the metrics only
        assert client.post("/predict", json={"features": ROW}, headers=scraper).status_code == 401


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_metrics_port_serves_the_sum_of_every_process_without_a_key(
    quick: ApiSettings, redis_client: redis.Redis
) -> None:
    keyed = quick.model_copy(
        update={"api_keys": SecretStr("api-key-one"), "metrics_port": free_port()}
    )
    server = serve_metrics(keyed)  # what `python -m berth_api` starts before its workers
    assert server is not None
    try:
        with serving(keyed) as first, serving(keyed) as second:
            for address in (first, second, first):
                response = httpx.post(
                    f"http://{address}/predict",
                    json={"features": ROW},
                    headers={"Authorization": "Bearer api-key-one"},
                )
                assert response.status_code == 200

            def three() -> None:
                found = scrape(f"127.0.0.1:{keyed.metrics_port}")
                assert total(found, "berth_http_requests_total", route="/predict") == 3

            eventually(three)
    finally:
        server.shutdown()
        server.server_close()


def test_the_ledger_gauges_rise_while_no_worker_stores(
    quick: ApiSettings, redis_client: redis.Redis
) -> None:
    # a worker started once (its group exists) and has stopped
    redis_client.xgroup_create(quick.ledger_stream, "writers", id="0", mkstream=True)
    with TestClient(create_app(quick), raise_server_exceptions=False) as client:
        for _ in range(5):
            assert client.post("/predict", json={"instances": [ROW, ROW]}).status_code == 200

        def waiting() -> tuple[float, float]:
            found = samples(client.get("/metrics").text)
            unread = total(found, "berth_ledger_backlog_entries", state="unread")
            age = total(found, "berth_ledger_oldest_waiting_age_seconds")
            assert unread >= 1
            assert age > 0
            return unread, age

        _, first_age = eventually(waiting)
        time.sleep(1.1)
        _, later_age = eventually(waiting)
        assert later_age > first_age  # the lag keeps rising while nothing stores


def test_the_worker_counts_what_it_stores(
    settings: ApiSettings,
    worker_settings: WorkerSettings,
    redis_client: redis.Redis,
    engine: Engine,
) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for _ in range(4):
            assert client.post("/predict", json={"instances": [ROW, ROW, ROW]}).status_code == 200
    consumer = LedgerConsumer(
        worker_settings.model_copy(update={"redis_key_prefix": settings.redis_key_prefix}),
        redis_client,
        LedgerWriter(engine, max_deliveries=3),
    )
    consumer.run(until_idle=True)
    snapshot = dict(consumer.metrics.set.snapshot())

    def value(name: str) -> Any:
        ((_, figure),) = snapshot[name]
        return figure

    assert value("berth_ledger_rows_stored_total") == 12
    assert value("berth_ledger_entries_acknowledged_total") >= 1
    lag_counts = value("berth_ledger_lag_seconds")
    assert sum(lag_counts[:-1]) == 12  # one observation per stored row
    assert 0 < lag_counts[-1] < 60  # their sum: seconds, not hours
    assert value("berth_worker_database_up") == 1
    assert value("berth_worker_redis_up") == 1


def test_json_log_lines_follow_a_request_to_its_ledger_entry(
    settings: ApiSettings, redis_client: redis.Redis, capfd: pytest.CaptureFixture[str]
) -> None:
    as_json = settings.model_copy(update={"log_format": "json", "access_log": "all"})
    with TestClient(create_app(as_json), raise_server_exceptions=False) as client:
        response = client.post(
            "/predict", json={"features": ROW}, headers={"X-Request-ID": "follow-me"}
        )
        assert response.status_code == 200
    lines = [
        json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")
    ]
    [access] = [line for line in lines if line["logger"] == "berth.access"]
    assert access["request_id"] == "follow-me"
    assert (access["model"], access["model_version"]) == ("iris", "1")
    entries: Any = redis_client.xrange(settings.ledger_stream)
    [(entry_id, _)] = entries
    assert access["ledger_entry"] == entry_id.decode()


def test_the_dashboard_and_the_alerts_only_use_metrics_that_exist(
    client: TestClient, worker_settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    exported = {
        family.name for family in text_string_to_metric_families(client.get("/metrics").text)
    }
    consumer = LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=3))
    exported |= {
        instrument.name.removesuffix("_total") for instrument in consumer.metrics.set.instruments
    }
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/berth.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    used = set(re.findall(r"\bberth_[a-z_]+", " ".join(queries) + rules))
    assert used, "no metric found in the dashboard"
    suffixes = ("_bucket", "_count", "_sum", "_total", "_info")
    unknown = sorted(
        name
        for name in used
        if name not in exported and not any(name.removesuffix(s) in exported for s in suffixes)
    )
    assert not unknown, f"queries name metrics nothing exports: {unknown}"
    assert len(queries) >= 15
