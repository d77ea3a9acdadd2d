"""The stack's metrics and its `monitoring` profile: exact counts over the API container's
processes, and a Prometheus that scrapes every target and answers for traffic and ledger lag."""

from __future__ import annotations

import os
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.stack import wait_until

ROW = [5.1, 3.5, 1.4, 0.2]
PROMETHEUS = os.environ.get("BERTH_PROMETHEUS_URL", "http://prometheus:9090")


def metrics_port_total(api_url: str, name: str, **labels: str) -> float:
    """A counter's sum as the API container's metrics port (9100, unpublished) reports it."""
    host = urlsplit(api_url).hostname
    response = httpx.get(f"http://{host}:9100/metrics", timeout=5)
    assert response.status_code == 200
    found = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found += sample.value
    return found


def settled_totals(api_url: str) -> tuple[float, float]:
    """The /predict 200s and iris rows counted so far, once the processes have published every
    earlier request: each publishes its counts about once a second, so the tests before this one
    may still be arriving. Two readings 2.5 s apart that agree are settled."""
    previous: tuple[float, float] | None = None

    def reading() -> tuple[float, float] | None:
        nonlocal previous
        current = (
            metrics_port_total(
                api_url, "berth_http_requests_total", route="/predict", status="200"
            ),
            metrics_port_total(api_url, "berth_predictions_total", model="iris"),
        )
        settled, previous = current == previous, current
        return current if settled else None

    return wait_until(reading, what="the metrics to settle", timeout=30, every=2.5)


def test_counts_are_exact_over_every_api_process(api: httpx.Client, api_url: str) -> None:
    before, rows_before = settled_totals(api_url)
    sent = 60  # spread by the kernel over the container's API_WORKERS processes
    for i in range(sent):
        body = {"instances": [[5.0 + i / 1000, 3.5, 1.4, 0.2], ROW]}
        assert api.post("/predict", json=body).status_code == 200

    def risen() -> bool:
        requests = metrics_port_total(
            api_url, "berth_http_requests_total", route="/predict", status="200"
        )
        rows = metrics_port_total(api_url, "berth_predictions_total", model="iris")
        return requests - before == sent and rows - rows_before == 2 * sent

    wait_until(risen, what=f"the metrics port to count {sent} requests", timeout=15)


def query(expression: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{PROMETHEUS}/api/v1/query", params={"query": expression}, timeout=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_every_target_and_answers_for_traffic_and_lag(
    api: httpx.Client,
) -> None:
    try:
        httpx.get(f"{PROMETHEUS}/-/ready", timeout=5)
    except httpx.TransportError:
        pytest.fail(f"no Prometheus at {PROMETHEUS}: is the monitoring profile up (make test)?")

    def all_up() -> bool:
        targets = httpx.get(f"{PROMETHEUS}/api/v1/targets", timeout=5).json()["data"]
        active = targets["activeTargets"]
        jobs = {target["labels"]["job"] for target in active}
        return {"berth-api", "berth-worker"} <= jobs and all(t["health"] == "up" for t in active)

    wait_until(all_up, what="every Prometheus target to be up", timeout=60, every=1)
    assert all(float(sample["value"][1]) == 1 for sample in query("up"))
    for i in range(300):
        assert (
            api.post("/predict", json={"features": [4.5 + i / 1000, 3.0, 1.5, 0.3]}).status_code
            == 200
        )

    for expression in (
        'sum(rate(berth_http_requests_total{route="/predict"}[1m])) > 0',
        "histogram_quantile(0.99, sum by (le) (rate(berth_ledger_lag_seconds_bucket[1m]))) >= 0",
        "max(berth_ledger_oldest_waiting_age_seconds) >= 0",
    ):
        wait_until(
            partial(query, expression),
            what=f"Prometheus to answer {expression}",
            timeout=90,
            every=2,
        )
    rules = httpx.get(f"{PROMETHEUS}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {rule["name"] for group in rules for rule in group["rules"]}
    assert {"BerthLedgerLagHigh", "BerthWorkerHeartbeatMissing", "BerthModelNotReady"} <= names
