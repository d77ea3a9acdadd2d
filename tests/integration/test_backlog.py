"""The ledger backlog from what Redis knows for certain, after claims and trims that leave its
own `lag` figure wrong; and a consumer group that forgets the workers that are gone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio
from sqlalchemy import Engine

from berth_common.backlog import COUNT_LIMIT, NoGroup, read_backlog, read_backlog_async
from berth_common.settings import CommonSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter

GROUP = "writers"


@pytest.fixture
def stream(common_settings: CommonSettings, redis_client: redis.Redis) -> str:
    name = common_settings.ledger_stream
    for i in range(10):
        redis_client.xadd(name, {"n": str(i)})
    redis_client.xgroup_create(name, GROUP, id="0")
    return name


def truly_unread(client: redis.Redis, stream: str) -> int:
    """Counted the slow way, for comparison: every entry after the group's last delivered id."""
    (group,) = client.xinfo_groups(stream)
    last = group["last-delivered-id"].decode()
    return len(client.xrange(stream, min=f"({last}", max="+"))


def ids(client: redis.Redis, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(stream)]


def test_a_fresh_group_has_everything_unread(redis_client: redis.Redis, stream: str) -> None:
    backlog = read_backlog(redis_client, stream, GROUP)
    assert (backlog.unread, backlog.pending, backlog.length) == (10, 0, 10)
    assert backlog.oldest_pending_age_seconds is None


def test_read_and_pending(redis_client: redis.Redis, stream: str) -> None:
    redis_client.xreadgroup(GROUP, "c1", {stream: ">"}, count=4)
    backlog = read_backlog(redis_client, stream, GROUP)
    assert (backlog.unread, backlog.pending) == (6, 4)
    assert backlog.oldest_pending_age_seconds is not None
    assert 0 <= backlog.oldest_pending_age_seconds < 60


def test_unread_entries_trimmed_away_leave_redis_lag_wrong_but_not_ours(
    redis_client: redis.Redis, stream: str
) -> None:
    redis_client.xreadgroup(GROUP, "c1", {stream: ">"}, count=3)
    # entries removed before any consumer read them (an operator's XTRIM MAXLEN, say)
    redis_client.xtrim(stream, minid=ids(redis_client, stream)[6], approximate=False)
    assert read_backlog(redis_client, stream, GROUP).unread == truly_unread(redis_client, stream)
    redis_client.xreadgroup(GROUP, "c1", {stream: ">"}, count=100)
    # everything has been delivered now: nothing is unread, whatever XINFO's lag says
    backlog = read_backlog(redis_client, stream, GROUP)
    assert backlog.unread == truly_unread(redis_client, stream) == 0
    # acknowledged and trimmed, as the worker does: an empty stream has nothing unread
    redis_client.xack(stream, GROUP, *ids(redis_client, stream))
    redis_client.xtrim(stream, maxlen=0, approximate=False)
    backlog = read_backlog(redis_client, stream, GROUP)
    assert (backlog.length, backlog.unread) == (0, 0)


def test_after_xautoclaim_and_deletions(redis_client: redis.Redis, stream: str) -> None:
    delivered: Any = redis_client.xreadgroup(GROUP, "dead", {stream: ">"}, count=5)
    first = [entry_id for entry_id, _ in delivered[0][1]]
    redis_client.xdel(stream, first[2])  # gone from the stream while pending
    redis_client.xautoclaim(stream, GROUP, "alive", min_idle_time=0, start_id="0-0")
    backlog = read_backlog(redis_client, stream, GROUP)
    assert backlog.unread == truly_unread(redis_client, stream) == 5
    assert backlog.pending == 4  # Redis 7 drops the deleted entry from the pending list


def test_the_count_is_bounded(common_settings: CommonSettings, redis_client: redis.Redis) -> None:
    name = common_settings.ledger_stream
    pipe = redis_client.pipeline(transaction=False)
    for i in range(COUNT_LIMIT + 5):
        pipe.xadd(name, {"n": str(i)})
    pipe.execute()
    redis_client.xgroup_create(name, GROUP, id="0")
    backlog = read_backlog(redis_client, name, GROUP)
    assert (backlog.unread, backlog.unread_capped) == (COUNT_LIMIT, True)
    assert f"{COUNT_LIMIT}+ entries unread" in backlog.describe()


def test_the_asyncio_reader_agrees(
    common_settings: CommonSettings, redis_client: redis.Redis, stream: str
) -> None:
    redis_client.xreadgroup(GROUP, "c1", {stream: ">"}, count=3)

    async def read() -> tuple[int, int]:
        client = redis.asyncio.Redis(**common_settings.redis_kwargs())
        try:
            backlog = await read_backlog_async(client, stream, GROUP)
        finally:
            await client.aclose()
        return backlog.unread, backlog.pending

    assert asyncio.run(read()) == (7, 3)


def test_no_group_yet(redis_client: redis.Redis, common_settings: CommonSettings) -> None:
    with pytest.raises(NoGroup):
        read_backlog(redis_client, common_settings.ledger_stream, GROUP)


def test_consumers_that_are_gone_and_hold_nothing_are_removed(
    worker_settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    stream = worker_settings.ledger_stream
    for i in range(6):
        redis_client.xadd(stream, {"n": str(i)})
    redis_client.xgroup_create(stream, GROUP, id="0")
    for name in ("gone", "holding", "alive"):
        delivered: Any = redis_client.xreadgroup(GROUP, name, {stream: ">"}, count=2)
        if name != "holding":
            redis_client.xack(stream, GROUP, *[i for i, _ in delivered[0][1]])
    redis_client.set(worker_settings.heartbeat_key("alive"), "{}", ex=30)
    consumer = LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=3))

    assert consumer.forget_gone_consumers() == ["gone"]

    names = {c["name"].decode() for c in redis_client.xinfo_consumers(stream, GROUP)}
    assert names == {"holding", "alive"}
    # nothing pending was dropped
    assert redis_client.xpending(stream, GROUP)["pending"] == 2
