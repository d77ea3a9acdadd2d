"""The API process's monitoring loop: publish this process's metrics for the others to merge,
and refresh the ledger's gauges, which every process measures alike (the stream's backlog, the
shared spool, the workers' heartbeats)."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from berth_api.coalesce import pause
from berth_api.ledger.gateway import RedisGateway
from berth_api.ledger.health import worker_beats
from berth_api.monitoring import ApiMetrics
from berth_api.serving.registry import ModelRegistry
from berth_common.backlog import NoGroup, read_backlog_async
from berth_common.metrics import SnapshotDirectory
from berth_common.settings import ApiSettings

logger = logging.getLogger(__name__)


def record_models(metrics: ApiMetrics, registry: ModelRegistry) -> None:
    """What this process serves, as loaded at start-up."""
    for (name, version), served in registry.models.items():
        default = "true" if name == registry.default_model else "false"
        metrics.model_ready.set((name, version, default), 1.0)
        metadata = served.bundle.metadata
        metrics.model_info.set(
            (name, version, served.batcher.engine, metadata.model_format, metadata.sha256)
        )
    if registry.default_model not in registry.resolved:
        metrics.model_ready.set((registry.default_model, "", "true"), 0.0)
    refused = [key for key in registry.failures if "/" in key]
    metrics.bundles_refused.set((), float(len(refused)))


async def refresh_ledger_gauges(
    metrics: ApiMetrics, settings: ApiSettings, redis: Redis, gateway: RedisGateway
) -> None:
    metrics.redis_available.set((), 1.0 if gateway.redis_available else 0.0)
    spool = gateway.spool
    metrics.spool_entries.set((), float(await asyncio.to_thread(spool.count_entries)))
    metrics.spool_oldest_age.set((), await asyncio.to_thread(spool.oldest_age_seconds))
    if not gateway.redis_available:
        return
    try:
        backlog = await read_backlog_async(redis, settings.ledger_stream, settings.ledger_group)
    except NoGroup:
        pass
    else:
        metrics.backlog.record(backlog)
    states: dict[str, float] = {"running": 0.0, "starting": 0.0, "stopping": 0.0}
    for beat in await worker_beats(settings, redis):
        state = str(beat.get("state"))
        states[state] = states.get(state, 0.0) + 1
    for state, count in states.items():
        metrics.workers.set((state,), count)


async def monitor_forever(
    metrics: ApiMetrics,
    directory: SnapshotDirectory,
    settings: ApiSettings,
    redis: Redis,
    gateway: RedisGateway,
    stop: asyncio.Event,
) -> None:
    next_gauges = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_gauges:
            # a few Redis calls and a look at the spool: not as often as the publishing
            next_gauges = time.monotonic() + settings.ledger_gauge_interval_seconds
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow the
                # cancellation that stops this loop, and the shutdown would wait for ever
                async with asyncio.timeout(settings.ledger_gauge_interval_seconds):
                    await refresh_ledger_gauges(metrics, settings, redis, gateway)
            except (RedisError, OSError, TimeoutError) as exc:
                metrics.redis_available.set((), 0.0)
                logger.debug("ledger gauges not refreshed: %r", exc)
        try:
            # a small file, written on the loop: a thread would cost more than the write
            directory.publish(metrics.set)
        except OSError as exc:  # a full or read-only disk must not stop the loop
            logger.warning("metrics not published to %s: %r", directory.directory, exc)
        await pause(stop, settings.metrics_publish_interval_seconds)
