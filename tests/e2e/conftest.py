"""End-to-end fixtures: the running compose stack of `make test`, seen from its `tests` container.

docker-compose.yml gives that container what these fixtures read:
  BERTH_API_URL             the API on the compose network (http://api:8000)
  BERTH_STACK_POSTGRES_DB   the stack's database (POSTGRES_DB itself names the integration
                            tests' database); host, user and password are POSTGRES_*
  REDIS_*                   the stack's Redis, to see how far the worker has read the ledger
  COMPOSE_PROJECT_NAME      the project to restart services of, through the Docker socket
Without BERTH_API_URL there is no stack to test: every test here is skipped, saying so, which is
what `make test-local` and a bare `pytest` on a developer machine get.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, create_engine

from berth_common.settings import CommonSettings
from tests.conftest import ROOT
from tests.e2e.stack import Compose, wait_ready

API_URL_VARIABLE = "BERTH_API_URL"
HERE = Path(__file__).resolve().parent
# How long the stack gets to come back after a restart: uvicorn workers load scikit-learn.
READY_TIMEOUT_SECONDS = 120.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get(API_URL_VARIABLE):
        return
    skip = pytest.mark.skip(
        reason=f"{API_URL_VARIABLE} is unset: the e2e tests need the compose stack (make test)"
    )
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def api_url() -> str:
    return os.environ[API_URL_VARIABLE].rstrip("/")


@pytest.fixture(scope="session")
def stack_settings() -> CommonSettings:
    """The connection settings of the stack's services, read from this container's environment."""
    return CommonSettings(postgres_db=os.environ.get("BERTH_STACK_POSTGRES_DB", "berth"))


@pytest.fixture(scope="session")
def api(api_url: str) -> Iterator[httpx.Client]:
    """An HTTP client on the API, which is ready before the first test starts."""
    with httpx.Client(base_url=api_url, timeout=10) as client:
        wait_ready(client, timeout=READY_TIMEOUT_SECONDS)
        yield client


@pytest.fixture(scope="session")
def stack_db(stack_settings: CommonSettings) -> Iterator[Engine]:
    """The stack's own database, the one its worker writes the ledger to."""
    engine = create_engine(stack_settings.database_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def stack_redis(stack_settings: CommonSettings) -> Iterator[redis.Redis]:
    client = redis.Redis(**stack_settings.redis_kwargs())  # type: ignore[arg-type]
    yield client
    client.close()


@pytest.fixture(scope="session")
def compose(stack_settings: CommonSettings) -> Compose:
    project = os.environ.get("COMPOSE_PROJECT_NAME")
    if not project:
        pytest.fail("COMPOSE_PROJECT_NAME is unset: which compose project is under test?")
    # The compose file is interpolated with this container's environment, whose POSTGRES_DB is the
    # integration tests' database: hand it the stack's again.
    return Compose(
        project=project,
        file=ROOT / "docker-compose.yml",
        env={"POSTGRES_DB": stack_settings.postgres_db},
    )
