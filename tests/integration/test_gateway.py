"""The Redis gateway's shared round trips, against the real Redis: one pipeline carries the
cache reads of some requests and the ledger entries and cache writes of others, and each
request must get exactly its own part of the answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import redis
from redis.asyncio import Redis as AsyncRedis

from berth_api.ledger.gateway import Lookup, RedisGateway
from berth_api.ledger.spool import LedgerSpool
from berth_api.monitoring import ApiMetrics
from berth_api.serving.predictor import ModelOutput
from berth_common.ledger import ServedRows, decode_entry
from berth_common.settings import CommonSettings


def record(request_id: str, rows: int) -> ServedRows:
    return ServedRows(
        request_id=request_id,
        model_name="iris",
        model_version="1",
        latency_ms=0.5,
        served_at=datetime.now(UTC),
        request_hash=None,
        features=[{"x": float(i)} for i in range(rows)],
        predictions=["setosa"] * rows,
        probabilities=[{"setosa": 1.0}] * rows,
        cached=[False] * rows,
    )


def test_mixed_reads_and_writes_in_one_round_trip_are_answered_in_order(
    common_settings: CommonSettings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    prefix = common_settings.redis_key_prefix
    stream = common_settings.ledger_stream
    key = f"{prefix}:cache:test"
    redis_client.set(f"{key}:known", '{"l":"virginica","p":{"virginica":1.0}}')

    async def run() -> tuple[list[object], int, int]:
        client = AsyncRedis(**common_settings.redis_kwargs())
        gateway = RedisGateway(
            client,
            keys=common_settings.keys,
            cache_ttl_seconds=60,
            spool=LedgerSpool(tmp_path),
            metrics=ApiMetrics(),
        )
        try:
            a, b = ModelOutput("a", {"a": 1.0}), ModelOutput("b", None)
            # gathered before the first round trip starts: all of them share it, in this order
            results: list[object] = await asyncio.gather(
                gateway.record(record("w-1", 2), {f"{key}:a": a, f"{key}:b": b}),
                gateway.lookup([f"{key}:known", f"{key}:missing"]),
                gateway.record(record("w-2", 1), {}),
                gateway.lookup([f"{key}:missing"]),
                gateway.record(record("w-3", 3), {f"{key}:c": a}),
            )  # type: ignore[assignment]
            again = await gateway.lookup([f"{key}:a", f"{key}:b", f"{key}:c"])
            results.append(again)
            return results, gateway.round_trips, gateway.requests
        finally:
            await client.aclose()

    results, round_trips, requests = asyncio.run(run())
    assert (round_trips, requests) == (2, 6)
    # the three requests' records share one stream entry, whose id each is told
    (entry_id,) = [entry_id.decode() for entry_id, _ in redis_client.xrange(stream)]
    assert results[0] == results[2] == results[4] == entry_id
    assert results[1] == Lookup([ModelOutput("virginica", {"virginica": 1.0}), None])
    assert results[3] == Lookup([None])
    assert results[5] == Lookup(
        [
            ModelOutput("a", {"a": 1.0}),
            ModelOutput("b", None),
            ModelOutput("a", {"a": 1.0}),
        ]
    )
    # one stream entry per round trip, holding every request's records in order
    entries = redis_client.xrange(stream)
    assert [[(r.request_id, r.row_index) for r in decode_entry(f)] for _, f in entries] == [
        [("w-1", 0), ("w-1", 1), ("w-2", 0), ("w-3", 0), ("w-3", 1), ("w-3", 2)]
    ]
    day, _ = common_settings.keys.served(datetime.now(UTC))
    assert sum(int(v) for v in redis_client.hgetall(day).values()) == 6
