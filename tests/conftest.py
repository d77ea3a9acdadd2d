"""Settings for every test level.

By default the tests talk to the PostgreSQL and Redis of a developer machine (127.0.0.1, trust
auth); the tests container of `make test` points the same variables at the compose stack. Each
run migrates a database of its own (POSTGRES_DB plus a random suffix, dropped at the end) and
each test gets its own Redis key prefix, so concurrent runs never see each other's data.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from berth_common.settings import ApiSettings, CommonSettings, WorkerSettings

HOST_DEFAULTS = {
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_PORT": "5432",
    "POSTGRES_USER": "postgres",
    "POSTGRES_PASSWORD": "local-test-password",
    "POSTGRES_DB": "test",
    "REDIS_HOST": "127.0.0.1",
    "REDIS_PORT": "6379",
    "REDIS_PASSWORD": "local-test-password",
}
ROOT = Path(__file__).resolve().parent.parent
RUN_DATABASE = (
    f"{os.environ.get('POSTGRES_DB', HOST_DEFAULTS['POSTGRES_DB'])}_{uuid.uuid4().hex[:8]}"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts[0] == "integration":
            item.add_marker(pytest.mark.integration)
        elif parts[0] == "e2e":
            item.add_marker(pytest.mark.e2e)


def service_env(database: str = RUN_DATABASE) -> dict[str, str]:
    """Connection settings as keyword arguments, the environment winning over host defaults."""
    env = {key.lower(): os.environ.get(key, default) for key, default in HOST_DEFAULTS.items()}
    env["postgres_db"] = database
    return env


@pytest.fixture
def key_prefix() -> str:
    return f"berth-test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def common_settings(key_prefix: str) -> CommonSettings:
    return CommonSettings(**service_env(), redis_key_prefix=key_prefix)  # type: ignore[arg-type]


@pytest.fixture
def worker_settings(key_prefix: str) -> WorkerSettings:
    return WorkerSettings(  # type: ignore[arg-type]
        **service_env(),
        redis_key_prefix=key_prefix,
        worker_consumer_name="test-consumer",
        worker_block_ms=100,
        worker_claim_idle_ms=200,
        worker_claim_interval_seconds=0.2,
        worker_retry_max_seconds=0.5,
    )


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def api_settings(key_prefix: str, models_dir: Path) -> ApiSettings:
    return ApiSettings(  # type: ignore[arg-type]
        **service_env(),
        redis_key_prefix=key_prefix,
        models_dir=models_dir,
        spool_dir=models_dir.parent / "spool",
        spool_replay_interval_seconds=0.1,
        api_workers=1,
        metrics_dir=models_dir.parent / "metrics",
    )


@pytest.fixture(scope="session")
def iris_bundle_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle, trained once per session; tests copy it instead of retraining."""
    from berth_api.bundles.train import train_demo

    models = tmp_path_factory.mktemp("iris-models")
    train_demo(models)
    return models


@pytest.fixture
def iris_models_dir(models_dir: Path, iris_bundle_source: Path) -> Path:
    shutil.copytree(iris_bundle_source / "iris", models_dir / "iris")
    return models_dir
