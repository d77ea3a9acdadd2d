"""How the ledger is doing, for /readyz: Redis, the spool, the stream backlog, the workers and
the database. None of these stops predictions, so each failing one marks the API degraded, not
unready; an operator sees which part of the ledger needs a hand."""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import Engine, text

from berth_api.ledger.spool import LedgerSpool
from berth_api.schemas import Check
from berth_common.backlog import NoGroup, read_backlog_async
from berth_common.replies import as_text
from berth_common.settings import ApiSettings

# Entries waiting in the stream beyond which the workers are said to be falling behind.
BACKLOG_LIMIT = 10_000
# The longest /readyz waits for the database, for the spool's count, and for Redis's three
# answers together; they are asked at once, and the gateway gives a replica 5 s to answer in all.
DATABASE_CHECK_SECONDS = 2.0
REDIS_CHECK_SECONDS = 1.5

T = TypeVar("T")
# The check of each kind running in a thread now, per event loop (see _in_thread_within).
_RUNNING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[Any]]] = (
    weakref.WeakKeyDictionary()
)


async def _in_thread_within(seconds: float, kind: str, func: Callable[[], T]) -> T:
    """`func` in a thread, waited for `seconds` at most, or TimeoutError.

    starlette's run_in_threadpool cannot be timed out: its wait is shielded, so asyncio.wait_for
    around it waited as long as the thread did, and a database slow to answer kept /readyz from
    answering at all; under a busy host the gateway then took every replica out at once, while
    predictions, which never touch the database, were being served in milliseconds. Here a late
    thread is left to finish on its own, and while it runs the next check of its kind waits for
    it rather than starting another: stuck checks cannot pile up threads."""
    loop = asyncio.get_running_loop()
    running = _RUNNING.setdefault(loop, {})
    future = running.get(kind)
    if future is None or future.done():
        future = running[kind] = loop.run_in_executor(None, func)
        # an abandoned check's failure is not left unretrieved (asyncio would log it)
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
    result: T = await asyncio.wait_for(asyncio.shield(future), seconds)
    return result


async def ledger_checks(
    settings: ApiSettings, redis: Redis, engine: Engine, spool: LedgerSpool
) -> dict[str, Check]:
    """Redis, the spool and the database, asked at the same time: each is bounded on its own,
    and one after the other their bounds added up to more than the gateway's 5 s for the whole
    answer, so a loaded machine, where all three are slow together, failed every replica's
    check at once."""
    redis_checks, spool_check, database_check = await asyncio.gather(
        _redis_checks(settings, redis), _spool(spool), _database(engine)
    )
    return {**redis_checks, "spool": spool_check, "database": database_check}


async def _redis_checks(settings: ApiSettings, redis: Redis) -> dict[str, Check]:
    try:
        async with asyncio.timeout(REDIS_CHECK_SECONDS):
            await redis.ping()
            return {
                "redis": Check(ok=True, detail="reachable"),
                "backlog": await _backlog(settings, redis),
                "workers": await _workers(settings, redis),
            }
    except (RedisError, OSError, TimeoutError) as exc:
        return {
            "redis": Check(ok=False, detail=f"unreachable, ledger entries are spooled: {exc!r}")
        }


async def _spool(spool: LedgerSpool) -> Check:
    try:
        spooled = await _in_thread_within(DATABASE_CHECK_SECONDS, "spool", spool.count_entries)
    except TimeoutError:
        return Check(
            ok=False, detail=f"not counted within {DATABASE_CHECK_SECONDS:g} s (disk busy)"
        )
    return Check(
        ok=spooled == 0, detail=f"{spooled} entries waiting for Redis" if spooled else "empty"
    )


async def _database(engine: Engine) -> Check:
    try:
        await _in_thread_within(DATABASE_CHECK_SECONDS, "database", lambda: _ping_database(engine))
    except TimeoutError:
        return Check(
            ok=False, detail=f"no answer within {DATABASE_CHECK_SECONDS:g} s (busy or unreachable)"
        )
    except Exception as exc:
        return Check(ok=False, detail=f"unreachable: {exc!r}"[:300])
    return Check(ok=True, detail="reachable")


async def _backlog(settings: ApiSettings, redis: Redis) -> Check:
    try:
        backlog = await read_backlog_async(redis, settings.ledger_stream, settings.ledger_group)
    except NoGroup:
        return Check(ok=False, detail="no worker has created the ledger stream's group yet")
    return Check(ok=backlog.waiting <= BACKLOG_LIMIT, detail=backlog.describe())


async def worker_beats(settings: ApiSettings, redis: Redis) -> list[dict[str, Any]]:
    """The heartbeat of every member of the ledger's consumer group whose heartbeat has not
    expired: two commands whatever the size of the keyspace. (A SCAN for the heartbeat keys walked
    every key, and the cache and idempotency keys of a busy stack number hundreds of thousands:
    thousands of round trips per /readyz, every second, on every replica.) A worker joins the
    group as it starts, a moment after its first beat."""
    try:
        consumers = await redis.xinfo_consumers(settings.ledger_stream, settings.ledger_group)
    except ResponseError:  # no stream or no group yet: no worker has read
        return []
    keys = [settings.keys.heartbeat(as_text(consumer["name"])) for consumer in consumers]
    if not keys:
        return []
    return [json.loads(raw) for raw in await redis.mget(keys) if raw is not None]


async def _workers(settings: ApiSettings, redis: Redis) -> Check:
    beats = await worker_beats(settings, redis)
    if not beats:
        return Check(ok=False, detail="no worker heartbeat: nothing is storing the ledger")
    states = sorted(f"{b.get('consumer')}: {b.get('state')}" for b in beats)
    ok = all(b.get("state") in ("running", "starting") for b in beats)
    return Check(ok=ok, detail="; ".join(states))


def _ping_database(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
