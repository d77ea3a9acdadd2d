"""`GET /dashboard/data`: the stream's backlog now (Redis), then the ledger's figures for one
served model version (SQL, in a worker thread)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from berth_api.bundles.bundle import version_sort_key
from berth_api.dashboard.figures import (
    BacklogFigures,
    DashboardData,
    ModelChoice,
    Subject,
    Window,
    ledger_figures,
)
from berth_api.serving.registry import ModelRegistry
from berth_common.backlog import NoGroup, read_backlog_async
from berth_common.settings import ApiSettings


async def dashboard_data(
    settings: ApiSettings,
    registry: ModelRegistry,
    engine: Engine,
    redis: Redis,
    *,
    name: str | None,
    version: str | None,
    minutes: int,
) -> DashboardData:
    """The figures of `name` at `version` (the version the name serves when None; the default
    model when no name is given) over the last `minutes`."""
    served = registry.default() if name is None else registry.get(name, version)
    metadata = served.bundle.metadata
    subject = Subject(
        model=ModelChoice(name=metadata.name, version=metadata.version),
        task=metadata.task,
        classes=metadata.classes,
        models=[
            ModelChoice(name=n, version=v)
            for n, v in sorted(registry.models, key=lambda key: (key[0], version_sort_key(key[1])))
        ],
        backlog=await current_backlog(settings, redis),
    )
    return await run_in_threadpool(ledger_figures, engine, subject, Window.ending_now(minutes))


async def current_backlog(settings: ApiSettings, redis: Redis) -> BacklogFigures | None:
    """None when Redis cannot tell: unreachable, slow, or no worker has made the group yet."""
    try:
        async with asyncio.timeout(settings.redis_timeout_seconds):
            backlog = await read_backlog_async(redis, settings.ledger_stream, settings.ledger_group)
    except (NoGroup, RedisError, OSError, TimeoutError):
        return None
    return BacklogFigures.model_validate(backlog)
