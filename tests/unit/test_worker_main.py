"""The worker's entry point: signal handling and a bad environment, without a network."""

from __future__ import annotations

import signal

import pytest
import redis
from sqlalchemy import create_engine

from berth_common.settings import WorkerSettings
from berth_worker.__main__ import ColdStop, ShutdownHandler, main
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter
from tests.conftest import service_env


@pytest.fixture
def consumer() -> LedgerConsumer:
    # Neither client connects before it is used, so nothing here touches the network.
    settings = WorkerSettings(**service_env())  # type: ignore[arg-type]
    writer = LedgerWriter(create_engine(settings.database_url), max_deliveries=3)
    return LedgerConsumer(settings, redis.Redis(), writer)


def test_first_signal_asks_for_a_warm_stop(consumer: LedgerConsumer) -> None:
    handler = ShutdownHandler(consumer)

    handler(signal.SIGTERM, None)

    assert consumer.stopping


def test_second_signal_stops_at_once(consumer: LedgerConsumer) -> None:
    handler = ShutdownHandler(consumer)
    handler(signal.SIGTERM, None)

    with pytest.raises(ColdStop) as caught:
        handler(signal.SIGINT, None)

    assert caught.value.signum == signal.SIGINT


def test_missing_password_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    monkeypatch.setenv("REDIS_PASSWORD", "a-real-redis-secret")

    with pytest.raises(SystemExit) as caught:
        main([])

    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "POSTGRES_PASSWORD" in err
    assert "Traceback" not in err


def test_placeholder_password_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POSTGRES_PASSWORD", "changeme-please")
    monkeypatch.setenv("REDIS_PASSWORD", "a-real-redis-secret")

    with pytest.raises(SystemExit) as caught:
        main([])

    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "POSTGRES_PASSWORD" in err
    assert "placeholder" in err
    assert "changeme-please" not in err


def test_check_with_a_bad_environment_is_unhealthy_not_reserved_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    monkeypatch.setenv("REDIS_PASSWORD", "a-real-redis-secret")

    assert main(["--check"]) == 1
    assert "POSTGRES_PASSWORD" in capsys.readouterr().err
