"""Connections of the worker process, configured for a loop that does its own retrying.

redis-py retries a failed command itself, with backoff, several times; in the worker that would
stack on top of the loop's own backoff and keep a warm stop waiting for seconds while Redis is
down. One immediate retry is kept: it replaces a pooled connection that Redis closed while idle.
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, create_engine

from berth_common.settings import WorkerSettings

CONNECT_TIMEOUT_SECONDS = 5.0
# Margin of the socket timeout over the blocking read, so that an empty BLOCK is not an error.
READ_TIMEOUT_MARGIN_SECONDS = 10.0
# A health check must answer well within Docker's HEALTHCHECK timeout.
CHECK_TIMEOUT_SECONDS = 3.0


def worker_redis(settings: WorkerSettings) -> redis.Redis:
    return redis.Redis(
        **settings.redis_kwargs(),
        socket_timeout=settings.worker_block_ms / 1000 + READ_TIMEOUT_MARGIN_SECONDS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), retries=1),
        client_name=f"berth-worker:{settings.worker_consumer_name}",
    )


def check_redis(settings: WorkerSettings) -> redis.Redis:
    return redis.Redis(
        **settings.redis_kwargs(),
        socket_timeout=CHECK_TIMEOUT_SECONDS,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), retries=0),
    )


def worker_engine(settings: WorkerSettings) -> Engine:
    # pre_ping: after a PostgreSQL restart the pool holds dead connections; test before use so the
    # first batch afterwards does not fail for nothing.
    return create_engine(
        settings.database_url,
        pool_pre_ping=True,
        pool_size=2,
        connect_args={"connect_timeout": int(CONNECT_TIMEOUT_SECONDS)},
    )
