"""Real PostgreSQL and Redis: the schema comes from the Alembic migrations, not from metadata."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import uvicorn
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text

from berth_api.app import create_app
from berth_api.server import uvicorn_options
from berth_common.settings import ApiSettings, CommonSettings
from tests.conftest import ROOT, RUN_DATABASE, service_env


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """This run's own database, created and migrated from scratch, dropped at the end."""
    # the maintenance database always exists and lets us create and drop the run's database
    admin_settings = CommonSettings(**service_env("postgres"))  # type: ignore[arg-type]
    admin = create_engine(admin_settings.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{RUN_DATABASE}"'))
    url = CommonSettings(**service_env()).database_url.render_as_string(hide_password=False)  # type: ignore[arg-type]
    command.upgrade(alembic_config(url), "head")
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{RUN_DATABASE}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _empty_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            text(
                "TRUNCATE predictions, ledger_dead_letters, ledger_conflicts, feedback, "
                "feedback_duplicates, model_versions, reference_bins, replays"
            )
        )


@pytest.fixture
def redis_client(common_settings: CommonSettings) -> Iterator[redis.Redis]:
    client = redis.Redis(**common_settings.redis_kwargs())  # type: ignore[arg-type]
    yield client
    keys = list(client.scan_iter(match=f"{common_settings.redis_key_prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def settings(api_settings: ApiSettings, iris_models_dir: Path) -> ApiSettings:
    """API settings serving the demo bundle; modules that serve more override this fixture."""
    return api_settings.model_copy(update={"models_dir": iris_models_dir})


@pytest.fixture
def caching(settings: ApiSettings) -> ApiSettings:
    """`settings` with every model's answers cached. The compiled demo model is quicker than the
    cache, so by default its answers are not cached (serving/cache_policy.py)."""
    return settings.model_copy(update={"cache_min_row_us": 0.0})


@pytest.fixture
def caching_client(caching: ApiSettings, redis_client: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(caching), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def client(settings: ApiSettings, redis_client: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@contextmanager
def serving(settings: ApiSettings) -> Iterator[str]:
    """The API on a real socket, served as `python -m berth_api` serves it (one process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def live_api(settings: ApiSettings) -> Iterator[str]:
    """The API on a real socket, for client libraries that bring their own HTTP stack."""
    with serving(settings) as address:
        yield address


@pytest.fixture
def churn_models_dir(iris_models_dir: Path, tmp_path: Path) -> Path:
    """The demo bundle and churn/1, a Pipeline with string and number features."""
    from berth_api.bundles.package import package
    from tests.models import churn_pipeline, save, write_sample

    churn = save(churn_pipeline(), tmp_path / "churn.joblib")
    package(churn, iris_models_dir, "churn", "1", write_sample(tmp_path / "sample.csv"))
    return iris_models_dir
