"""Fixtures of the fault-injection tests: the stack of `make test-faults`, and ways to hurt it.

These tests take minutes and kill services of the stack they run against, so they run only in
`make test-faults`, which starts a compose project of their own (`berth-faults`) and hands its
`tests` container the project's env file as BERTH_FAULTS_ENV_FILE. Everywhere else (`make test`,
`make test-local`, a bare `pytest`) they are skipped, saying so.

Services are driven through the mounted Docker socket: compose (with the project's env file, so
that a service it creates is configured like the ones `make` created) for whole services, and the
Docker Engine API for one container of a scaled service, which compose cannot single out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, RootTransaction, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from berth_api.serving.idempotency import ClaimRecord, ClaimState
from berth_common.ledger import FEEDBACK_FORMAT
from berth_common.settings import CommonSettings
from tests.conftest import ROOT
from tests.e2e.faults.load import Backlog, backlog
from tests.e2e.stack import Compose, wait_ready, wait_until

ENV_FILE_VARIABLE = "BERTH_FAULTS_ENV_FILE"
HERE = Path(__file__).resolve().parent
DOCKER_SOCKET = "/var/run/docker.sock"
# Long-running services; the one-shots (migrate, seed-model) are not touched.
SERVICES = ("postgres", "redis", "api", "worker")
RECOVERY_TIMEOUT_SECONDS = 240.0
# Connect and read timeout of the tests' own PostgreSQL and Redis clients.
CLIENT_TIMEOUT_SECONDS = 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get(ENV_FILE_VARIABLE):
        return
    skip = pytest.mark.skip(
        reason=f"{ENV_FILE_VARIABLE} is unset: fault-injection tests run in `make test-faults`"
    )
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@dataclass(frozen=True, slots=True)
class Container:
    id: str
    name: str
    state: str  # running, exited, ...

    @property
    def consumer(self) -> str:
        """The worker's consumer name: its hostname, which Docker sets to the short id."""
        return self.id[:12]


class FaultStack:
    """The compose project under test, to stop, kill, start and scale its services."""

    def __init__(self, compose: Compose, env_file: str, docker: httpx.Client) -> None:
        self._compose = compose
        self._env_file = env_file
        self._docker = docker

    @property
    def project(self) -> str:
        return self._compose.project

    def compose(self, *args: str, timeout: float = 180) -> str:
        return self._compose("--env-file", self._env_file, *args, timeout=timeout).stdout

    def containers(self, service: str) -> list[Container]:
        """The service's containers, stopped ones included, oldest first."""
        labels = [
            f"com.docker.compose.project={self.project}",
            f"com.docker.compose.service={service}",
            "com.docker.compose.oneoff=False",
        ]
        response = self._docker.get(
            "/containers/json",
            params={"all": "true", "filters": json.dumps({"label": labels})},
        )
        response.raise_for_status()
        found = sorted(response.json(), key=lambda c: c["Created"])
        return [Container(c["Id"], c["Names"][0].lstrip("/"), c["State"]) for c in found]

    def running(self, service: str) -> list[Container]:
        return [c for c in self.containers(service) if c.state == "running"]

    def kill(self, container: Container, signal: str = "KILL") -> None:
        """`docker kill -s SIGNAL`, and for KILL waits until the container has exited."""
        response = self._docker.post(f"/containers/{container.id}/kill", params={"signal": signal})
        assert response.status_code == 204, response.text
        if signal == "KILL":
            wait_until(
                lambda: self.state(container) != "running",
                what=f"{container.name} to exit",
                timeout=30,
            )

    def state(self, container: Container) -> str:
        response = self._docker.get(f"/containers/{container.id}/json")
        response.raise_for_status()
        return str(response.json()["State"]["Status"])

    def health(self, container: Container) -> str:
        """Docker's verdict on the container's health check: starting, healthy or unhealthy;
        its state (running, exited, ...) for a container without a health check."""
        response = self._docker.get(f"/containers/{container.id}/json")
        response.raise_for_status()
        state = response.json()["State"]
        return str(state["Health"]["Status"] if state.get("Health") else state["Status"])

    def restore(self) -> None:
        """Every service running and healthy again, with one worker.

        Waited for here rather than by `up --wait`, which gives up at once on a container marked
        unhealthy: a worker that could not beat while the previous scenario's fault lasted stays
        marked so until its next check passes, up to a check interval after it is well again.
        """
        self.compose(
            "up", "--detach", "--no-deps", "--no-recreate", "--scale", "worker=1", *SERVICES,
            timeout=RECOVERY_TIMEOUT_SECONDS,
        )  # fmt: skip
        verdicts: dict[str, str] = {}

        def healthy() -> bool:
            verdicts.clear()
            for service in SERVICES:
                found = self.running(service)
                verdicts.update({c.name: self.health(c) for c in found} or {service: "absent"})
            return all(verdict in ("healthy", "running") for verdict in verdicts.values())

        try:
            wait_until(healthy, what="every service healthy", timeout=RECOVERY_TIMEOUT_SECONDS)
        except BaseException:
            print(f"  health of the services: {verdicts}")
            raise


class Ledger:
    """The stack's database and ledger stream, through clients that give up within seconds
    while the server they talk to is down (the e2e fixtures' clients wait for the OS).
    """

    def __init__(self, db: Engine, client: redis.Redis, settings: CommonSettings) -> None:
        self.db = db
        self.redis = client
        self.stream = settings.ledger_stream
        self.group = settings.ledger_group
        self.keys = settings.keys

    def backlog(self) -> Backlog | None:
        return backlog(self.redis, self.stream, self.group)

    def pending_on(self, consumer: str) -> int:
        state = self.backlog()
        return 0 if state is None else state.consumers.get(consumer, 0)

    def consumers(self) -> set[str]:
        state = self.backlog()
        return set() if state is None else set(state.consumers)

    def pending_ids(self, consumer: str) -> list[str]:
        """Stream ids delivered to `consumer` and not acknowledged."""
        rows = self.redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=100_000, consumername=consumer
        )
        return [_text(row["message_id"]) for row in rows]

    def request_ids_of(self, stream_ids: Collection[str]) -> set[str]:
        """The request ids recorded in the given stream entries (feedback entries left out)."""
        found: set[str] = set()
        for stream_id in stream_ids:
            for _, fields in self.redis.xrange(self.stream, stream_id, stream_id):
                if not fields or b"records" not in fields:
                    continue
                records: list[dict[str, Any]] = json.loads(_text(fields[b"records"]))
                found.update(record["request_id"] for record in records)
        return found

    def owed_request_ids(self) -> set[str]:
        """The requests whose records wait in the stream: in entries pending on any consumer or
        not yet delivered. (An entry holds the records of every request that shared a Redis
        round trip, so entries are fewer than requests.)"""
        pending = self.redis.xpending_range(
            self.stream, self.group, min="-", max="+", count=1_000_000
        )
        waiting = {_text(row["message_id"]) for row in pending}
        for group in self.redis.xinfo_groups(self.stream):
            if _text(group["name"]) == self.group:
                last = _text(group["last-delivered-id"])
                waiting.update(
                    _text(entry_id)
                    for entry_id, _ in self.redis.xrange(self.stream, min=f"({last}", max="+")
                )
        return self.request_ids_of(waiting)

    def present(self, stream_ids: Collection[str]) -> int:
        """How many of the given stream entries the stream still holds."""
        return sum(bool(self.redis.xrange(self.stream, sid, sid)) for sid in stream_ids)

    def feedback_entries_of(self, stream_ids: Collection[str]) -> list[str]:
        """Which of the given stream entries hold feedback."""
        return [
            stream_id
            for stream_id in stream_ids
            for _, fields in self.redis.xrange(self.stream, stream_id, stream_id)
            if fields.get(b"v") == FEEDBACK_FORMAT.encode()
        ]

    def working_on(self, request_ids: Collection[str]) -> int:
        """How many of these requests an API is at work on: it has read and parsed them (their
        idempotency claim is held) and not yet answered them (the claim is still pending), in
        one round trip."""
        values = self.redis.mget([self.keys.idempotency(rid) for rid in request_ids])
        records = [ClaimRecord.parse(value) for value in values if value is not None]
        return sum(record is not None and record.state is ClaimState.PENDING for record in records)

    def redis_up(self) -> bool:
        try:
            return bool(self.redis.ping())
        except (redis.RedisError, OSError):
            return False

    def database_up(self) -> bool:
        try:
            with self.db.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def waiting_for_lock(self, statement: str) -> int:
        """Sessions whose statement starting with `statement` waits for a lock."""
        with self.db.connect() as connection:
            count = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND starts_with(upper(ltrim(query, E' \\t\\r\\n')), :statement)"
                ),
                {"statement": statement.upper()},
            ).scalar_one()
            return int(count)


class TableLock:
    """An EXCLUSIVE lock on `predictions`, on a connection of its own: reads go on, every INSERT
    waits. A worker that read a batch then blocks with it in hand, pending and unacknowledged.
    """

    STATEMENT = "LOCK TABLE predictions IN EXCLUSIVE MODE"
    # Never queued for longer than this, so that no lock outlives a test that went wrong.
    TIMEOUT_SECONDS = 30

    def __init__(self, db: Engine) -> None:
        self._connection = db.connect()
        self._transaction: RootTransaction | None = None

    def acquire(self) -> None:
        """Blocks until granted; PostgreSQL grants locks in the order they were asked for."""
        self._transaction = self._connection.begin()
        self._connection.execute(text(f"SET LOCAL lock_timeout = '{self.TIMEOUT_SECONDS}s'"))
        self._connection.execute(text(self.STATEMENT))

    def release(self) -> None:
        if self._transaction is not None and self._transaction.is_active:
            self._transaction.rollback()
        self._transaction = None

    def close(self) -> None:
        self.release()
        self._connection.close()


@pytest.fixture(scope="session")
def fault_stack(stack_settings: CommonSettings) -> Iterator[FaultStack]:
    project = os.environ.get("COMPOSE_PROJECT_NAME")
    if not project:
        pytest.fail("COMPOSE_PROJECT_NAME is unset: which compose project is under test?")
    # As in tests/e2e/conftest.py: this container's POSTGRES_DB names the integration tests'
    # database, and would change the postgres service's configuration if compose saw it.
    compose = Compose(
        project=project,
        file=ROOT / "docker-compose.yml",
        env={"POSTGRES_DB": stack_settings.postgres_db},
    )
    transport = httpx.HTTPTransport(uds=DOCKER_SOCKET)
    with httpx.Client(transport=transport, base_url="http://docker", timeout=60) as docker:
        yield FaultStack(compose, os.environ[ENV_FILE_VARIABLE], docker)


@pytest.fixture(scope="session")
def ledger(stack_settings: CommonSettings) -> Iterator[Ledger]:
    engine = create_engine(
        stack_settings.database_url,
        pool_pre_ping=True,
        connect_args={"connect_timeout": CLIENT_TIMEOUT_SECONDS},
    )
    client = redis.Redis(
        **stack_settings.redis_kwargs(),  # type: ignore[arg-type]
        socket_timeout=CLIENT_TIMEOUT_SECONDS,
        socket_connect_timeout=CLIENT_TIMEOUT_SECONDS,
    )
    yield Ledger(engine, client, stack_settings)
    client.close()
    engine.dispose()


@pytest.fixture
def healthy_stack(
    fault_stack: FaultStack, api: httpx.Client, ledger: Ledger
) -> Iterator[FaultStack]:
    """The stack whole and idle before the test, and made whole again after it, pass or fail."""
    fault_stack.restore()
    settle(fault_stack, api, ledger)
    yield fault_stack
    fault_stack.restore()
    settle(fault_stack, api, ledger)


def settle(stack: FaultStack, api: httpx.Client, ledger: Ledger) -> None:
    """Waits for the API to be ready, the database to answer and the ledger backlog to be empty."""
    wait_ready(api, timeout=RECOVERY_TIMEOUT_SECONDS)
    wait_until(ledger.database_up, what="PostgreSQL to answer", timeout=60)
    wait_until(
        lambda: (state := ledger.backlog()) is not None and state.drained,
        what="the ledger backlog to be empty",
        timeout=RECOVERY_TIMEOUT_SECONDS,
    )
    workers = stack.running("worker")
    assert len(workers) == 1, workers


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
