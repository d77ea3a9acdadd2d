"""Real PostgreSQL and Redis: the schema comes from the Alembic migrations, not from metadata."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text

from berth_common.settings import CommonSettings
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
