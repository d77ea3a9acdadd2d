"""Real PostgreSQL and Redis: the schema comes from the Alembic migrations, not from metadata."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text

from berth_api.app import create_app
from berth_common.settings import ApiSettings, CommonSettings
from tests.conftest import ROOT, service_env


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session")
def database_url() -> str:
    """The test database, migrated from scratch once per session."""
    settings = CommonSettings(**service_env())  # type: ignore[arg-type]
    url = settings.database_url.render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in ("predictions", "ledger_dead_letters", "alembic_version"):
            connection.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
    engine.dispose()
    command.upgrade(alembic_config(url), "head")
    return url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _empty_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE predictions, ledger_dead_letters"))


@pytest.fixture
def redis_client(common_settings: CommonSettings) -> Iterator[redis.Redis]:
    client = redis.Redis(**common_settings.redis_kwargs())  # type: ignore[arg-type]
    yield client
    keys = list(client.scan_iter(match=f"{common_settings.redis_key_prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def live_api(api_settings: ApiSettings, iris_models_dir: Path) -> Iterator[str]:
    """The API on a real socket, for client libraries that bring their own HTTP stack."""
    settings = api_settings.model_copy(update={"models_dir": iris_models_dir})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
