"""The worker's heartbeat: written by the loop, read by `python -m berth_worker --check`.

A key with a TTL, refreshed on every loop iteration, proves more than a live process: it proves
the loop still turns and still reaches Redis. The check needs only the worker's own image (no curl,
no HTTP port), so it can be the container's HEALTHCHECK.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from berth_common.settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What the worker was doing at its last beat; `pending` and `unread` (the group's, see
    berth_common.backlog) are None when unknown."""

    consumer: str
    state: str
    last_batch_size: int
    pending: int | None = None
    unread: int | None = None

    def to_json(self, now: float) -> str:
        return json.dumps(
            {
                "consumer": self.consumer,
                "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                "unix": now,
                "state": self.state,
                "last_batch_size": self.last_batch_size,
                "pending": self.pending,
                "unread": self.unread,
            }
        )


@dataclass(frozen=True, slots=True)
class HealthStatus:
    healthy: bool
    reason: str


def write_heartbeat(
    client: redis.Redis, settings: WorkerSettings, beat: Heartbeat, now: float | None = None
) -> None:
    value = beat.to_json(time.time() if now is None else now)
    client.set(settings.heartbeat_key(), value, ex=settings.worker_heartbeat_ttl_seconds)


def evaluate_heartbeat(
    raw: bytes | str | None, *, key: str, ttl_seconds: int, now: float
) -> HealthStatus:
    """Judges a heartbeat value; pure so that every verdict can be tested without Redis."""
    if raw is None:
        return HealthStatus(
            False,
            f"no heartbeat at {key}: the worker is not running, or its loop has not reached "
            f"Redis for {ttl_seconds}s",
        )
    try:
        data: Any = json.loads(raw)
        beat_at = float(data["unix"])
        state = str(data.get("state", "unknown"))
    except (ValueError, TypeError, KeyError):
        return HealthStatus(False, f"heartbeat at {key} is not one this worker writes: {raw!r}")
    age = now - beat_at
    # The TTL normally removes a stale key; this also catches a key whose TTL was lost.
    if age > ttl_seconds:
        return HealthStatus(False, f"heartbeat at {key} is {age:.0f}s old (limit {ttl_seconds}s)")
    return HealthStatus(True, f"healthy: heartbeat {max(age, 0.0):.1f}s ago, state {state}")


def check_health(settings: WorkerSettings, client: redis.Redis) -> HealthStatus:
    key = settings.heartbeat_key()
    try:
        raw = client.get(key)
    except redis.RedisError as exc:
        return HealthStatus(
            False,
            f"cannot read heartbeat from Redis at {settings.redis_host}:{settings.redis_port}: "
            f"{exc}",
        )
    return evaluate_heartbeat(
        raw, key=key, ttl_seconds=settings.worker_heartbeat_ttl_seconds, now=time.time()
    )
