"""`python -m berth_worker` as a container runs it: a process, its signals and its exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, text

from berth_common.ledger import PredictionRecord, encode_entry
from berth_common.settings import WorkerSettings
from tests.conftest import service_env

CONSUMER = "process-test"


@pytest.fixture
def worker_env(key_prefix: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("WORKER_")}
    env.update({key.upper(): value for key, value in service_env().items()})
    env.update(
        REDIS_KEY_PREFIX=key_prefix,
        WORKER_CONSUMER_NAME=CONSUMER,
        WORKER_BLOCK_MS="100",
        WORKER_HEARTBEAT_TTL_SECONDS="5",
        LOG_LEVEL="INFO",
    )
    return env


@pytest.fixture
def process_settings(worker_settings: WorkerSettings) -> WorkerSettings:
    return worker_settings.model_copy(update={"worker_consumer_name": CONSUMER})


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "berth_worker"],
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def run_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth_worker", "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 15
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"worker exited with {process.returncode}: {process.communicate()[1]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the worker")
        time.sleep(0.05)


def row_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM predictions")).scalar_one())


def test_worker_process_stores_is_healthy_and_stops_warm_on_sigterm(
    process_settings: WorkerSettings,
    worker_env: dict[str, str],
    start_worker: Callable[[], subprocess.Popen[str]],
    redis_client: redis.Redis,
    engine: Engine,
) -> None:
    assert run_check(worker_env).returncode == 1
    process = start_worker()
    wait_for(lambda: bool(redis_client.exists(process_settings.heartbeat_key())), process)

    record = PredictionRecord(
        request_id="from-process",
        row_index=0,
        model_name="iris",
        model_version="1",
        features={"petal_length": 1.4},
        prediction=0,
        probabilities=None,
        cached=False,
        latency_ms=0.5,
        served_at=datetime.now(UTC),
    )
    fields: dict[Any, Any] = encode_entry([record])
    redis_client.xadd(process_settings.ledger_stream, fields)
    wait_for(lambda: row_count(engine) == 1, process)
    healthy = run_check(worker_env)
    assert healthy.returncode == 0, healthy.stderr
    assert healthy.stdout.startswith("healthy: heartbeat")

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)

    assert process.returncode == 0, stderr
    assert "SIGTERM, warm stop" in stderr
    assert "Traceback" not in stderr
    pending = redis_client.xpending(process_settings.ledger_stream, process_settings.ledger_group)
    assert pending["pending"] == 0


def test_check_fails_without_a_heartbeat(worker_env: dict[str, str], key_prefix: str) -> None:
    result = run_check(worker_env)

    assert result.returncode == 1
    assert f"no heartbeat at {key_prefix}:worker:{CONSUMER}:heartbeat" in result.stderr


def test_missing_password_is_one_line_and_exit_2(worker_env: dict[str, str]) -> None:
    del worker_env["POSTGRES_PASSWORD"]

    result = subprocess.run(
        [sys.executable, "-m", "berth_worker"],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "POSTGRES_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr
