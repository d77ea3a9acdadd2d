"""The ledger worker against a real Redis stream and a real PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, text

from berth_common.ledger import PredictionRecord, encode_entry, raw_entry_text
from berth_common.settings import WorkerSettings
from berth_worker.clients import check_redis, worker_redis
from berth_worker.consumer import LedgerConsumer
from berth_worker.health import check_health
from berth_worker.writer import DELETED_ENTRY_ERROR, LedgerWriter, StoreResult, StreamEntry
from tests.factories import SERVED_AT, make_record


def publish(client: redis.Redis, settings: WorkerSettings, *records: PredictionRecord) -> str:
    return publish_fields(client, settings, encode_entry(list(records)))


def publish_fields(client: redis.Redis, settings: WorkerSettings, fields: Any) -> str:
    return str_of(client.xadd(settings.ledger_stream, fields))


def make_consumer(
    settings: WorkerSettings,
    client: redis.Redis,
    engine: Engine,
    writer: LedgerWriter | None = None,
) -> LedgerConsumer:
    writer = writer or LedgerWriter(engine, max_deliveries=settings.worker_max_deliveries)
    return LedgerConsumer(settings, client, writer)


def pending_count(client: redis.Redis, settings: WorkerSettings) -> int:
    return int(client.xpending(settings.ledger_stream, settings.ledger_group)["pending"])


def pending_deliveries(client: redis.Redis, settings: WorkerSettings) -> dict[str, int]:
    rows = client.xpending_range(settings.ledger_stream, settings.ledger_group, "-", "+", 100)
    return {str_of(row["message_id"]): int(row["times_delivered"]) for row in rows}


def str_of(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT request_id, row_index, model_name, model_version, features, prediction, "
                "probabilities, probabilities IS NULL AS no_probabilities, cached, latency_ms, "
                "served_at, stored_at FROM predictions ORDER BY request_id, row_index"
            )
        )
        return [dict(row._mapping) for row in result]


def dead_letters(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(
            text("SELECT stream_id, payload, error, delivery_count FROM ledger_dead_letters")
        )
        return {row.stream_id: dict(row._mapping) for row in result}


@pytest.fixture
def settings(worker_settings: WorkerSettings) -> WorkerSettings:
    return worker_settings


@pytest.fixture
def unreachable_engine() -> Iterator[Engine]:
    engine = create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
    )
    yield engine
    engine.dispose()


def stop_after(consumer: LedgerConsumer, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, consumer.stop, kwargs={"reason": "test timer"})
    timer.start()
    return timer


def test_published_record_is_stored_with_its_values_and_acked(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    record = make_record(cached=True)
    publish(redis_client, settings, record)

    outcome = make_consumer(settings, redis_client, engine).run(until_idle=True)

    (row,) = stored(engine)
    stored_at = row.pop("stored_at")
    assert row == {
        "request_id": "req-1",
        "row_index": 0,
        "model_name": "iris",
        "model_version": "3",
        "features": {"sepal_length": 5.1, "petal_width": 0.2, "note": None},
        "prediction": "setosa",
        "probabilities": {"setosa": 0.97, "versicolor": 0.02, "virginica": 0.01},
        "no_probabilities": False,
        "cached": True,
        "latency_ms": 1.75,
        "served_at": SERVED_AT,
    }
    assert isinstance(stored_at, datetime)
    assert (outcome.entries, outcome.rows, outcome.acked) == (1, 1, 1)
    assert pending_count(redis_client, settings) == 0


def test_missing_values_are_stored_as_null(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    publish(redis_client, settings, make_record(prediction=None, probabilities=None))

    make_consumer(settings, redis_client, engine).run(until_idle=True)

    (row,) = stored(engine)
    # probabilities absent is SQL NULL; a prediction of None is the JSON value null.
    assert row["no_probabilities"] is True
    assert row["prediction"] is None


def test_same_record_published_twice_gives_one_row(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    record = make_record()
    publish(redis_client, settings, record)
    publish(redis_client, settings, record)
    consumer = make_consumer(settings, redis_client, engine)

    first = consumer.run(until_idle=True)
    publish(redis_client, settings, record)
    second = consumer.run(until_idle=True)

    assert len(stored(engine)) == 1
    assert (first.entries, first.rows, first.acked) == (2, 1, 2)
    assert (second.entries, second.rows, second.acked) == (1, 0, 1)
    assert pending_count(redis_client, settings) == 0


def test_multi_row_entry_gives_one_row_per_record(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    records = [
        make_record("batch-7", index, prediction=label)
        for index, label in enumerate(["setosa", "versicolor", "virginica"])
    ]
    publish(redis_client, settings, *records)

    outcome = make_consumer(settings, redis_client, engine).run(until_idle=True)

    rows = stored(engine)
    assert [(r["request_id"], r["row_index"], r["prediction"]) for r in rows] == [
        ("batch-7", 0, "setosa"),
        ("batch-7", 1, "versicolor"),
        ("batch-7", 2, "virginica"),
    ]
    assert (outcome.entries, outcome.rows) == (1, 3)


def test_entry_of_a_dead_consumer_is_claimed_and_stored(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    consumer = make_consumer(settings, redis_client, engine)
    consumer.ensure_group()
    stream_id = publish(redis_client, settings, make_record("orphan"))
    redis_client.xreadgroup(settings.ledger_group, "dead", {settings.ledger_stream: ">"}, count=10)
    assert pending_deliveries(redis_client, settings) == {stream_id: 1}
    time.sleep(settings.worker_claim_idle_ms / 1000 + 0.1)

    outcome = consumer.run(until_idle=True)

    assert [row["request_id"] for row in stored(engine)] == ["orphan"]
    assert (outcome.entries, outcome.acked) == (1, 1)
    assert pending_count(redis_client, settings) == 0


def test_entry_of_a_live_consumer_is_left_alone(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    settings = settings.model_copy(update={"worker_claim_idle_ms": 5000})
    consumer = make_consumer(settings, redis_client, engine)
    consumer.ensure_group()
    stream_id = publish(redis_client, settings, make_record("busy"))
    redis_client.xreadgroup(settings.ledger_group, "other", {settings.ledger_stream: ">"}, count=10)

    outcome = consumer.run(until_idle=True)

    assert stored(engine) == []
    assert outcome.entries == 0
    assert pending_deliveries(redis_client, settings) == {stream_id: 1}


def test_own_pending_entries_are_read_again_at_start(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    # A long claim idle time, so that only the start-up drain can pick these entries up.
    patient = settings.model_copy(update={"worker_claim_idle_ms": 600_000})
    make_consumer(patient, redis_client, engine).ensure_group()
    publish(redis_client, patient, make_record("crashed-1"))
    publish(redis_client, patient, make_record("crashed-2"))
    redis_client.xreadgroup(
        patient.ledger_group, patient.worker_consumer_name, {patient.ledger_stream: ">"}, count=10
    )

    outcome = make_consumer(patient, redis_client, engine).run(until_idle=True)

    assert [row["request_id"] for row in stored(engine)] == ["crashed-1", "crashed-2"]
    assert (outcome.entries, outcome.acked) == (2, 2)
    assert pending_count(redis_client, patient) == 0


def test_malformed_entries_are_dead_lettered_and_the_good_ones_stored(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    good_record = make_record("good-1")
    nan_records = json.dumps([make_record("nan").model_dump(mode="json")]).replace("5.1", "NaN")
    bad_fields: list[dict[Any, Any]] = [
        {"v": "9", "records": "[]"},
        {b"v": b"\xff\xfe", b"records": b"\x00"},
        {"v": "1", "records": nan_records},
        {"v": "1", "records": '[{"request_id": "r"}]'},
    ]
    publish(redis_client, settings, good_record)
    bad_ids = [publish_fields(redis_client, settings, fields) for fields in bad_fields]
    publish(redis_client, settings, make_record("good-2"), make_record("good-2", 1))

    outcome = make_consumer(settings, redis_client, engine).run(until_idle=True)

    assert [(r["request_id"], r["row_index"]) for r in stored(engine)] == [
        ("good-1", 0),
        ("good-2", 0),
        ("good-2", 1),
    ]
    letters = dead_letters(engine)
    assert sorted(letters) == sorted(bad_ids)
    for stream_id, fields in zip(bad_ids, bad_fields, strict=True):
        assert letters[stream_id]["payload"] == raw_entry_text(fields)
        assert letters[stream_id]["delivery_count"] == 1
    errors = [letters[stream_id]["error"] for stream_id in bad_ids]
    assert errors[0] == "unknown entry format '9', expected one of ['1', '2']"
    assert errors[1].startswith("unknown entry format '\ufffd\ufffd'")
    assert errors[2] == "records are not valid JSON: NaN is not valid JSON"
    assert errors[3].startswith("invalid record: ")
    assert (outcome.entries, outcome.rows, outcome.dead_lettered, outcome.acked) == (6, 3, 4, 6)
    assert pending_count(redis_client, settings) == 0


def test_entry_the_database_refuses_is_retried_then_dead_lettered(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    # Claim only after a clear second, so that the first run cannot claim the entry it deferred.
    settings = settings.model_copy(
        update={"worker_max_deliveries": 2, "worker_claim_idle_ms": 1000}
    )
    consumer = make_consumer(settings, redis_client, engine)
    publish(redis_client, settings, make_record("fine-1"))
    # Valid for the contract, too large for the integer column: a deterministic DataError.
    refused_id = publish(redis_client, settings, make_record("too-big", 2**31))
    publish(redis_client, settings, make_record("fine-2"))

    first = consumer.run(until_idle=True)

    assert [row["request_id"] for row in stored(engine)] == ["fine-1", "fine-2"]
    assert dead_letters(engine) == {}
    assert pending_deliveries(redis_client, settings) == {refused_id: 1}
    assert (first.entries, first.acked, first.deferred) == (3, 2, 1)

    time.sleep(settings.worker_claim_idle_ms / 1000 + 0.1)
    second = consumer.run(until_idle=True)

    letter = dead_letters(engine)[refused_id]
    assert letter["delivery_count"] == 2
    assert "out of range for type integer" in letter["error"]
    assert letter["error"].startswith("not stored after 2 deliveries")
    assert (second.entries, second.dead_lettered, second.acked) == (1, 1, 1)
    assert pending_count(redis_client, settings) == 0
    assert len(stored(engine)) == 2


def test_entry_deleted_while_pending_is_recorded_as_lost(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    consumer = make_consumer(settings, redis_client, engine)
    consumer.ensure_group()
    stream_id = publish(redis_client, settings, make_record("trimmed"))
    redis_client.xreadgroup(settings.ledger_group, "dead", {settings.ledger_stream: ">"}, count=10)
    redis_client.xdel(settings.ledger_stream, stream_id)
    time.sleep(settings.worker_claim_idle_ms / 1000 + 0.1)

    consumer.run(until_idle=True)

    letter = dead_letters(engine)[stream_id]
    assert letter["error"] == DELETED_ENTRY_ERROR
    assert letter["payload"] == "{}"
    assert pending_count(redis_client, settings) == 0


def test_database_down_acks_nothing_and_a_later_run_stores_everything_once(
    settings: WorkerSettings,
    redis_client: redis.Redis,
    engine: Engine,
    unreachable_engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(redis_client, settings, make_record("a"))
    publish(redis_client, settings, make_record("b"), make_record("b", 1))
    publish(redis_client, settings, make_record("a"))
    down = make_consumer(settings, redis_client, unreachable_engine)

    timer = stop_after(down, 1.0)
    with caplog.at_level(logging.WARNING, logger="berth_worker"):
        outcome = down.run()
    timer.join()

    retries = [r for r in caplog.records if "database write of 3 entries failed" in r.message]
    assert len(retries) >= 2
    assert outcome.acked == 0
    assert pending_count(redis_client, settings) == 3
    assert stored(engine) == []

    recovered = make_consumer(settings, redis_client, engine).run(until_idle=True)

    rows = stored(engine)
    assert [(r["request_id"], r["row_index"]) for r in rows] == [("a", 0), ("b", 0), ("b", 1)]
    assert (recovered.entries, recovered.rows, recovered.acked) == (3, 3, 3)
    assert pending_count(redis_client, settings) == 0


def test_redis_down_is_survived_with_retries(
    settings: WorkerSettings, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    client = worker_redis(settings.model_copy(update={"redis_port": 1}))
    consumer = make_consumer(settings, client, engine)

    timer = stop_after(consumer, 1.0)
    try:
        with caplog.at_level(logging.WARNING, logger="berth_worker"):
            outcome = consumer.run()
    finally:
        timer.join()
        client.close()

    assert outcome.entries == 0
    assert len([r for r in caplog.records if "Redis unavailable" in r.message]) >= 2


def test_heartbeat_is_set_and_checked(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    publish(redis_client, settings, make_record(), make_record(row_index=1))
    assert not check_health(settings, redis_client).healthy

    make_consumer(settings, redis_client, engine).run(until_idle=True)

    key = settings.heartbeat_key()
    raw = redis_client.get(key)
    assert raw is not None
    beat = json.loads(raw)
    assert beat["consumer"] == "test-consumer"
    assert beat["state"] == "running"
    assert abs(beat["unix"] - time.time()) < 5
    assert 0 < int(redis_client.ttl(key)) <= settings.worker_heartbeat_ttl_seconds
    status = check_health(settings, redis_client)
    assert status.healthy, status.reason

    other = settings.model_copy(update={"worker_consumer_name": "some-other-host"})
    assert not check_health(other, redis_client).healthy
    redis_client.delete(key)
    status = check_health(settings, redis_client)
    assert not status.healthy
    assert key in status.reason


def test_check_reports_an_unreachable_redis(settings: WorkerSettings) -> None:
    client = check_redis(settings.model_copy(update={"redis_port": 1}))
    try:
        status = check_health(settings, client)
    finally:
        client.close()

    assert not status.healthy
    assert "cannot read heartbeat" in status.reason


class StopWhileStoring(LedgerWriter):
    """Asks the consumer to stop while a batch is being written, as a SIGTERM would."""

    consumer: LedgerConsumer | None = None

    def store(self, entries: Sequence[StreamEntry]) -> StoreResult:
        assert self.consumer is not None
        self.consumer.stop("test stop")
        return super().store(entries)


def test_warm_stop_finishes_and_acks_the_current_batch(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    settings = settings.model_copy(update={"worker_batch_size": 2})
    writer = StopWhileStoring(engine, max_deliveries=settings.worker_max_deliveries)
    consumer = make_consumer(settings, redis_client, engine, writer)
    writer.consumer = consumer
    for name in ("first", "second", "third"):
        publish(redis_client, settings, make_record(name))

    outcome = consumer.run()

    assert consumer.stopping
    assert [row["request_id"] for row in stored(engine)] == ["first", "second"]
    assert (outcome.entries, outcome.acked) == (2, 2)
    assert pending_count(redis_client, settings) == 0
    # The third entry was never read, so the next worker gets it as a new entry.
    (group,) = redis_client.xinfo_groups(settings.ledger_stream)
    assert group["lag"] == 1


class TcpProxy:
    """Forwards a local port to Redis, and can cut every connection to play a Redis outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._running = False
        self.port = 0

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._running = True
        self._spawn(self._accept, listener)

    def stop(self) -> None:
        self._running = False
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        self._threads.clear()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while self._running:
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self._target)
                self._sockets += [client, upstream]
                self._spawn(self._pump, client, upstream)
                self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.05)
        while self._running:
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                sink.sendall(data)
            except OSError:
                break
        # Cut both directions, as a crashed Redis would.
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {condition}")
        time.sleep(0.05)


def test_worker_reconnects_after_a_redis_outage(
    settings: WorkerSettings,
    redis_client: redis.Redis,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = TcpProxy((settings.redis_host, settings.redis_port))
    proxy.start()
    via_proxy = settings.model_copy(update={"redis_host": "127.0.0.1", "redis_port": proxy.port})
    client = worker_redis(via_proxy)
    consumer = make_consumer(via_proxy, client, engine)
    worker = threading.Thread(target=consumer.run)
    try:
        with caplog.at_level(logging.INFO, logger="berth_worker"):
            worker.start()
            publish(redis_client, settings, make_record("before"))
            wait_for(lambda: len(stored(engine)) == 1)

            proxy.stop()
            publish(redis_client, settings, make_record("during"))
            wait_for(lambda: any("Redis unavailable" in r.message for r in caplog.records))
            assert len(stored(engine)) == 1

            proxy.start()
            wait_for(lambda: len(stored(engine)) == 2)
            consumer.stop()
            worker.join(timeout=10)
    finally:
        consumer.stop()
        worker.join(timeout=10)
        proxy.stop()
        client.close()

    assert not worker.is_alive()
    assert [row["request_id"] for row in stored(engine)] == ["before", "during"]
    assert pending_count(redis_client, settings) == 0
    assert any("Redis reachable again" in r.message for r in caplog.records)


def test_group_is_recreated_when_the_stream_vanishes(
    settings: WorkerSettings,
    redis_client: redis.Redis,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = make_consumer(settings, redis_client, engine)
    publish(redis_client, settings, make_record("before"))
    consumer.run(until_idle=True)
    # A second worker joining the existing group must not fail on BUSYGROUP.
    make_consumer(settings, redis_client, engine).ensure_group()

    redis_client.delete(settings.ledger_stream)
    publish(redis_client, settings, make_record("after"))
    with caplog.at_level(logging.WARNING, logger="berth_worker"):
        outcome = consumer.run(until_idle=True)

    assert [row["request_id"] for row in stored(engine)] == ["after", "before"]
    assert (outcome.entries, outcome.acked) == (1, 1)
    assert any("vanished" in r.message for r in caplog.records)


def test_trimming_removes_only_acknowledged_entries(
    worker_settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    consumer = make_consumer(worker_settings, redis_client, engine)
    stored_ids = [publish(redis_client, worker_settings, make_record(f"t-{i}")) for i in range(3)]
    consumer.run(until_idle=True)
    # one entry delivered to a consumer that died before acknowledging it, one never delivered
    pending_id = publish(redis_client, worker_settings, make_record("t-pending"))
    redis_client.xreadgroup(
        worker_settings.ledger_group, "dead", {worker_settings.ledger_stream: ">"}, count=1
    )
    unread_id = publish(redis_client, worker_settings, make_record("t-unread"))

    assert redis_client.xlen(worker_settings.ledger_stream) == 5
    assert consumer.trim_acknowledged() == 3
    remaining = [
        str_of(entry_id) for entry_id, _ in redis_client.xrange(worker_settings.ledger_stream)
    ]
    assert remaining == [pending_id, unread_id]
    assert not set(stored_ids) & set(remaining)
    assert consumer.trim_acknowledged() == 0  # the pending entry holds everything after it


def test_a_partial_batch_lets_entries_gather_before_the_next_read(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    """Caught up, the worker waits WORKER_BATCH_WAIT_MS so that the next transaction is a large
    one; with a full batch (a backlog) it reads on at once."""
    batched = settings.model_copy(update={"worker_batch_size": 3, "worker_batch_wait_ms": 40})
    consumer = make_consumer(batched, redis_client, engine)
    pauses: list[float] = []
    consumer._pause = pauses.append  # type: ignore[method-assign,assignment]

    for i in range(4):
        publish(redis_client, batched, make_record(f"gather-{i}"))
    first = consumer.process_available()  # a full batch of 3: no wait
    second = consumer.process_available()  # the last one: a partial batch, then the wait
    third = consumer.process_available()  # nothing new (after the block): no wait

    assert (first.entries, second.entries, third.entries) == (3, 1, 0)
    assert pauses == [0.04]
    assert len(stored(engine)) == 4


def test_the_heartbeat_is_refreshed_once_a_second_not_every_iteration(
    settings: WorkerSettings, redis_client: redis.Redis, engine: Engine
) -> None:
    quick = settings.model_copy(update={"worker_block_ms": 1})
    consumer = make_consumer(quick, redis_client, engine)
    consumer.process_available()
    first = redis_client.get(quick.heartbeat_key())
    consumer.process_available()
    assert redis_client.get(quick.heartbeat_key()) == first  # not rewritten within the second
    consumer.stop("test")
    consumer.process_available()  # the state changed: written at once
    assert json.loads(redis_client.get(quick.heartbeat_key()))["state"] == "stopping"
