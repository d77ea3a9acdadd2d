"""The health verdict on a heartbeat value, without Redis."""

from __future__ import annotations

import json

from berth_worker.health import Heartbeat, evaluate_heartbeat

KEY = "berth:worker:host-1:heartbeat"
NOW = 1_700_000_000.0


def test_heartbeat_json_carries_time_state_and_backlog() -> None:
    beat = Heartbeat(consumer="host-1", state="running", last_batch_size=7, pending=3, unread=12)

    data = json.loads(beat.to_json(NOW))

    assert data == {
        "consumer": "host-1",
        "time": "2023-11-14T22:13:20.000+00:00",
        "unix": NOW,
        "state": "running",
        "last_batch_size": 7,
        "pending": 3,
        "unread": 12,
    }


def test_fresh_heartbeat_is_healthy() -> None:
    raw = Heartbeat("host-1", "running", 0).to_json(NOW - 4).encode()

    status = evaluate_heartbeat(raw, key=KEY, ttl_seconds=30, now=NOW)

    assert status.healthy
    assert status.reason == "healthy: heartbeat 4.0s ago, state running"


def test_missing_heartbeat_is_unhealthy_and_names_the_key() -> None:
    status = evaluate_heartbeat(None, key=KEY, ttl_seconds=30, now=NOW)

    assert not status.healthy
    assert KEY in status.reason
    assert "not running" in status.reason


def test_heartbeat_older_than_the_ttl_is_unhealthy() -> None:
    raw = Heartbeat("host-1", "running", 0).to_json(NOW - 31)

    status = evaluate_heartbeat(raw, key=KEY, ttl_seconds=30, now=NOW)

    assert not status.healthy
    assert "31s old" in status.reason


def test_foreign_value_is_unhealthy() -> None:
    status = evaluate_heartbeat(b"alive", key=KEY, ttl_seconds=30, now=NOW)

    assert not status.healthy
    assert "not one this worker writes" in status.reason
