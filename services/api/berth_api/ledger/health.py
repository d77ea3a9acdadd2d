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
from redis.exceptions import RedisError
from sqlalchemy import Engine, text

from berth_api.ledger.spool import LedgerSpool
from berth_api.schemas import Check
from berth_common.backlog import NoGroup, read_backlog_async
from berth_common.settings import ApiSettings

# Entries waiting in the stream beyond which the workers are said to be falling behind.
BACKLOG_LIMIT = 10_000
# The longest /readyz waits for the database, and for the spool's count: the gateway gives a
# replica 5 s to answer in all.
DATABASE_CHECK_SECONDS = 2.0

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
    timeout = settings.redis_timeout_seconds
    checks: dict[str, Check] = {}
    try:
        await asyncio.wait_for(redis.ping(), timeout=timeout)
        checks["redis"] = Check(ok=True, detail="reachable")
        checks["backlog"] = await asyncio.wait_for(_backlog(settings, redis), timeout=timeout)
        checks["workers"] = await asyncio.wait_for(_workers(settings, redis), timeout=timeout)
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = Check(
            ok=False, detail=f"unreachable, ledger entries are spooled: {exc!r}"
        )
    try:
        spooled = await _in_thread_within(DATABASE_CHECK_SECONDS, "spool", spool.count_entries)
    except TimeoutError:
        checks["spool"] = Check(
            ok=False, detail=f"not counted within {DATABASE_CHECK_SECONDS:g} s (disk busy)"
        )
    else:
        checks["spool"] = Check(
            ok=spooled == 0,
            detail=f"{spooled} entries waiting for Redis" if spooled else "empty",
        )
    try:
        await _in_thread_within(DATABASE_CHECK_SECONDS, "database", lambda: _ping_database(engine))
        checks["database"] = Check(ok=True, detail="reachable")
    except TimeoutError:
        checks["database"] = Check(
            ok=False, detail=f"no answer within {DATABASE_CHECK_SECONDS:g} s (busy or unreachable)"
        )
    except Exception as exc:
        checks["database"] = Check(ok=False, detail=f"unreachable: {exc!r}"[:300])
    return checks


async def _backlog(settings: ApiSettings, redis: Redis) -> Check:
    try:
        backlog = await read_backlog_async(redis, settings.ledger_stream, settings.ledger_group)
    except NoGroup:
        return Check(ok=False, detail="no worker has created the ledger stream's group yet")
    return Check(ok=backlog.waiting <= BACKLOG_LIMIT, detail=backlog.describe())


async def worker_beats(settings: ApiSettings, redis: Redis) -> list[dict[str, Any]]:
    """The heartbeat of every worker whose heartbeat has not expired."""
    beats: list[dict[str, Any]] = []
    async for key in redis.scan_iter(match=settings.keys.heartbeat_pattern, count=100):
        raw = await redis.get(key)
        if raw is not None:
            beats.append(json.loads(raw))
    return beats


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
