"""/readyz's ledger checks against the real Redis: the workers are found through the consumer
group whatever else the keyspace holds, and the checks' bounds do not add up."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import Engine

from berth_api.ledger import health
from berth_api.ledger.health import ledger_checks, worker_beats
from berth_api.ledger.spool import LedgerSpool
from berth_common.settings import ApiSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.health import Heartbeat, write_heartbeat
from berth_worker.writer import LedgerWriter


def beats(settings: ApiSettings) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        client = AsyncRedis(**settings.redis_kwargs())
        try:
            return await worker_beats(settings, client)
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_workers_are_the_group_members_with_a_live_heartbeat(
    api_settings: ApiSettings,
    worker_settings: WorkerSettings,
    redis_client: redis.Redis,
    engine: Engine,
) -> None:
    stream, group = api_settings.ledger_stream, api_settings.ledger_group
    assert beats(api_settings) == []  # no stream, no group: no worker has started

    # a worker that has started on an empty stream: it has read nothing, and is found
    consumer = LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=3))
    consumer.ensure_group()
    consumer.beat()
    # a member whose heartbeat has expired, a heartbeat of no member, and many other keys
    redis_client.xgroup_createconsumer(stream, group, "silent")
    stranger = worker_settings.model_copy(update={"worker_consumer_name": "stranger"})
    write_heartbeat(redis_client, stranger, Heartbeat("stranger", "running", 0))
    redis_client.mset({f"{api_settings.redis_key_prefix}:cache:{i}": "x" for i in range(5_000)})

    found = beats(api_settings)

    assert [(beat["consumer"], beat["state"]) for beat in found] == [
        (worker_settings.worker_consumer_name, "starting")
    ]


def test_slow_spool_and_database_are_waited_for_together(
    api_settings: ApiSettings, engine: Engine, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Each stuck for longer than its bound: /readyz answers after about one bound, not two."""
    release = threading.Event()

    class StuckSpool(LedgerSpool):
        def count_entries(self) -> int:
            release.wait(10)
            return 0

    stuck_engine: Any = type("StuckEngine", (), {"connect": lambda self: release.wait(10)})()

    async def check() -> tuple[float, dict[str, Any]]:
        client = AsyncRedis(**api_settings.redis_kwargs())
        started = time.monotonic()
        try:
            checks = await ledger_checks(api_settings, client, stuck_engine, StuckSpool(tmp_path))
        finally:
            release.set()
            await client.aclose()
        return time.monotonic() - started, checks

    seconds, checks = asyncio.run(check())

    assert seconds < health.DATABASE_CHECK_SECONDS * 1.5, seconds
    assert checks["redis"].ok
    assert not checks["spool"].ok
    assert "not counted within" in (checks["spool"].detail or "")
    assert not checks["database"].ok
    assert "no answer within" in (checks["database"].detail or "")
