"""Issue 4, fault 5: Redis down for a minute. The API keeps answering without its cache, keeps
every record in its durable spool, and replays the spool into the stream when Redis returns."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.faults.conftest import FaultStack, Ledger
from tests.e2e.faults.test_faults import Window, finish, scenario
from tests.e2e.stack import wait_until

OUTAGE_SECONDS = 60


def test_redis_down_for_a_minute_is_spooled_and_replayed(
    healthy_stack: FaultStack, api_url: str, api: httpx.Client, ledger: Ledger
) -> None:
    stack = healthy_stack
    readiness: dict[str, Any] = {}

    with scenario(api_url, ledger, "redis-down", duration=90) as (load, sampler):
        load.sleep_until(10)
        start = load.now()
        stack.compose("stop", "redis")
        load.sleep_until(start + OUTAGE_SECONDS / 2)
        readiness = api.get("/readyz", timeout=10).json()
        load.sleep_until(start + OUTAGE_SECONDS)
        stack.compose("start", "redis")
        wait_until(ledger.redis_up, what="Redis to answer", timeout=60)
        end = load.now()
        results = finish("redis stopped 60 s", load, sampler, Window(start, end), ledger)

    print(f"  /readyz during the outage: {readiness}")
    # degraded, not unready: predictions went on, their records in the spool
    assert readiness["status"] == "degraded"
    assert readiness["checks"]["redis"]["ok"] is False
    assert readiness["checks"]["spool"]["ok"] is False
    assert readiness["checks"]["spool"]["detail"].endswith("entries waiting for Redis")
    served_during = results.served_between(start, end)
    assert served_during >= 0.9 * 40 * OUTAGE_SECONDS, served_during
    # the spool drained: nothing is left waiting once every row is stored
    drained = api.get("/readyz", timeout=10).json()["checks"]["spool"]
    assert drained == {"ok": True, "detail": "empty"}, drained
