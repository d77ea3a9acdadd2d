"""The worker loop: read ledger entries from the consumer group, store them, then acknowledge.

An entry is acknowledged only after the transaction that wrote it has committed, so a crash at any
point leaves it pending and it is written again later; the writer's inserts are idempotent, so
writing twice is harmless while acknowledging early would lose records. Entries left pending by a
consumer that died are claimed once they have been idle for `worker_claim_idle_ms`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from sqlalchemy.exc import SQLAlchemyError

from berth_common.backlog import Backlog, NoGroup, read_backlog
from berth_common.logconfig import log_fields
from berth_common.replies import as_text
from berth_common.settings import WorkerSettings
from berth_worker.backoff import backoff_delay
from berth_worker.health import Heartbeat, write_heartbeat
from berth_worker.monitoring import WorkerMetrics
from berth_worker.writer import LedgerWriter, StoreResult, StreamEntry

log = logging.getLogger(__name__)

# Failures after which the same command can succeed once Redis is back; anything else (WRONGTYPE,
# a missing permission) is a deployment error and should stop the worker loudly.
REDIS_OUTAGE_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
# Longest a pause runs on after stop() was called.
_PAUSE_SLICE_SECONDS = 0.05
# A loop iteration refreshes the heartbeat at most this often (and whenever the state changes):
# under load an iteration takes milliseconds, and two Redis calls each time cost real CPU.
HEARTBEAT_INTERVAL_SECONDS = 1.0

RawEntry = tuple[Any, Any]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """Counts over one or more batches; `entries` counts every entry read or claimed."""

    entries: int = 0
    rows: int = 0
    acked: int = 0
    deferred: int = 0
    dead_lettered: int = 0

    def __add__(self, other: BatchOutcome) -> BatchOutcome:
        return BatchOutcome(
            entries=self.entries + other.entries,
            rows=self.rows + other.rows,
            acked=self.acked + other.acked,
            deferred=self.deferred + other.deferred,
            dead_lettered=self.dead_lettered + other.dead_lettered,
        )


class LedgerConsumer:
    """One member of the ledger consumer group; `run()` is the worker, the steps are public."""

    def __init__(
        self,
        settings: WorkerSettings,
        redis_client: redis.Redis,
        writer: LedgerWriter,
        *,
        rng: random.Random | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = metrics or WorkerMetrics()
        self._redis = redis_client
        self._writer = writer
        self._rng = rng or random.Random()
        self._stream = settings.ledger_stream
        self._group = settings.ledger_group
        self._name = settings.worker_consumer_name
        # A plain flag, not a threading.Event: stop() runs in signal handlers, and Event.set()
        # there can deadlock on the lock that Event.wait() holds in the interrupted main thread.
        self._stop_requested = False
        self._stop_reason = ""
        self._group_ready = False
        self._pending_drained = False
        self._next_claim_at = 0.0
        self._last_batch_size = 0
        self._last_beat_at = -float("inf")
        self._beaten_state = ""
        self._state = "starting"
        self._batches = 0
        # As of the last heartbeat: what the group has yet to store.
        self.backlog: Backlog | None = None

    @property
    def stopping(self) -> bool:
        return self._stop_requested

    def stop(self, reason: str = "stop requested") -> None:
        """Warm stop: the batch in hand is finished and acknowledged, then `run()` returns.

        Only sets a flag, so that it is safe in a signal handler and from another thread.
        """
        self._stop_reason = reason
        self._stop_requested = True

    def run(self, *, until_idle: bool = False) -> BatchOutcome:
        """Loops until stopped, or with `until_idle` until an iteration finds nothing to do."""
        total = BatchOutcome()
        outages = 0
        log.info("ledger consumer %s reading %s as group %s", self._name, self._stream, self._group)
        while not self._stop_requested:
            try:
                step = self.process_available()
            except REDIS_OUTAGE_ERRORS as exc:
                self.metrics.redis_up.set((), 0.0)
                delay = backoff_delay(
                    outages, cap=self._settings.worker_retry_max_seconds, rng=self._rng
                )
                outages += 1
                log.warning(
                    "Redis unavailable (%s), reconnecting in %.2fs (attempt %d)",
                    exc,
                    delay,
                    outages,
                )
                # Redis may come back empty, or with our group but entries we never acknowledged.
                self._group_ready = False
                self._pending_drained = False
                self._pause(delay)
                continue
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOGROUP"):
                    raise
                log.warning("consumer group %s vanished (%s), recreating it", self._group, exc)
                self._group_ready = False
                continue
            self.metrics.redis_up.set((), 1.0)
            if outages:
                log.info("Redis reachable again after %d failed attempts", outages)
                outages = 0
            total += step
            if until_idle and step.entries == 0:
                break
        self._state = "stopped"
        log.info(
            "ledger consumer %s stopped (%s): %d entries, %d rows written",
            self._name,
            self._stop_reason or "idle",
            total.entries,
            total.rows,
        )
        return total

    def process_available(self) -> BatchOutcome:
        """One loop iteration: beat, then own pending entries, stale ones, and one new batch."""
        self._state = "stopping" if self._stop_requested else "running"
        if (
            self._state != self._beaten_state
            or time.monotonic() - self._last_beat_at >= HEARTBEAT_INTERVAL_SECONDS
        ):
            self.beat()
        if not self._group_ready:
            self.ensure_group()
        outcome = BatchOutcome()
        if not self._pending_drained:
            outcome += self.drain_pending()
            self._pending_drained = True
        if time.monotonic() >= self._next_claim_at:
            outcome += self.claim_stale()
            self.trim_acknowledged()
            self.forget_gone_consumers()
            self._next_claim_at = time.monotonic() + self._settings.worker_claim_interval_seconds
        if not self._stop_requested:
            new = self.read_new()
            outcome += new
            wait = self._settings.worker_batch_wait_ms / 1000
            if wait and 0 < new.entries < self._settings.worker_batch_size:
                # Caught up: let entries gather for a moment, so that a steady stream is stored
                # in a few large transactions rather than hundreds of tiny ones a second.
                self._pause(wait)
        return outcome

    def ensure_group(self) -> None:
        """Creates the group if need be, and joins it: the API finds the workers through the
        group's members (a read on an empty stream does not make a consumer a member)."""
        try:
            self._redis.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        else:
            log.info("created consumer group %s on %s", self._group, self._stream)
        self._redis.xgroup_createconsumer(self._stream, self._group, self._name)
        self._group_ready = True

    def drain_pending(self) -> BatchOutcome:
        """Entries delivered to this consumer name before a restart and never acknowledged."""
        outcome = BatchOutcome()
        cursor = "0"
        while not self._stop_requested:
            response = self._redis.xreadgroup(
                self._group,
                self._name,
                {self._stream: cursor},
                count=self._settings.worker_batch_size,
            )
            entries = stream_entries(response)
            if not entries:
                break
            log.info("re-reading %d entries left pending by %s", len(entries), self._name)
            outcome += self._process(entries)
            # Entries left pending by this batch stay in the list; move past them, not back to 0.
            cursor = as_text(entries[-1][0])
        return outcome

    def claim_stale(self) -> BatchOutcome:
        """Entries idle on any consumer for `worker_claim_idle_ms`: its owner is dead or stuck."""
        outcome = BatchOutcome()
        cursor = "0-0"
        while not self._stop_requested:
            response = self._redis.xautoclaim(
                self._stream,
                self._group,
                self._name,
                min_idle_time=self._settings.worker_claim_idle_ms,
                start_id=cursor,
                count=self._settings.worker_batch_size,
            )
            cursor = as_text(response[0])
            entries: list[RawEntry] = [e for e in response[1] if e[0] is not None]
            # Redis 7 reports, and drops from the pending list, entries trimmed from the stream;
            # they go to the dead-letter table so that the loss is on record.
            deleted = response[2] if len(response) > 2 else []
            entries.extend((stream_id, {}) for stream_id in deleted)
            if entries:
                log.info("claimed %d stale entries", len(entries))
                outcome += self._process(entries)
            if cursor == "0-0":
                break
        return outcome

    def trim_acknowledged(self) -> int:
        """Deletes stream entries every consumer has acknowledged; returns how many.

        Everything older than the oldest pending entry, or when none is pending everything up to
        the last one delivered, is stored and acknowledged. Entries not yet delivered and entries
        pending anywhere are never touched, so a trim cannot lose a record.
        """
        last_delivered = None
        for group in self._redis.xinfo_groups(self._stream):
            if as_text(group["name"]) == self._group:
                last_delivered = as_text(group["last-delivered-id"])
        if last_delivered is None or last_delivered == "0-0":
            return 0
        summary = self._redis.xpending(self._stream, self._group)
        if summary["pending"]:
            keep_from = as_text(summary["min"])
        else:
            millis, sequence = stream_id_key(last_delivered)
            keep_from = f"{millis}-{sequence + 1}"
        # exact: "~" trims only whole radix-tree nodes, which a small backlog never fills
        removed = int(self._redis.xtrim(self._stream, minid=keep_from, approximate=False))
        if removed:
            log.debug("trimmed %d acknowledged entries before %s", removed, keep_from)
        return removed

    def forget_gone_consumers(self) -> list[str]:
        """Removes from the group the consumers that hold nothing and have no heartbeat: workers
        that stopped or were scaled away. Without this the group lists every worker that ever
        ran; a live worker removed by mistake is added back by its next read."""
        gone = []
        for consumer in self._redis.xinfo_consumers(self._stream, self._group):
            name = as_text(consumer["name"])
            if name == self._name or int(consumer["pending"]):
                continue
            if self._redis.exists(self._settings.heartbeat_key(name)):
                continue
            # XGROUP DELCONSUMER would drop its pending entries; it has none (checked above)
            self._redis.xgroup_delconsumer(self._stream, self._group, name)
            gone.append(name)
        if gone:
            log.info("removed consumers that are gone from group %s: %s", self._group, gone)
        return gone

    def read_new(self) -> BatchOutcome:
        response = self._redis.xreadgroup(
            self._group,
            self._name,
            {self._stream: ">"},
            count=self._settings.worker_batch_size,
            block=self._settings.worker_block_ms,
        )
        entries = stream_entries(response)
        if not entries:
            self._last_batch_size = 0
            return BatchOutcome()
        # `>` delivers only entries never delivered before: this read is the first delivery of
        # each, so their counts are known without asking XPENDING.
        return self._process(entries, first_delivery=True)

    def beat(self) -> None:
        """Refreshes the heartbeat; raises when Redis is unreachable, like any other call."""
        backlog = None
        with contextlib.suppress(NoGroup):  # no stream or group yet: nothing to report
            backlog = read_backlog(self._redis, self._stream, self._group)
        self.backlog = backlog
        if backlog is not None:
            self.metrics.backlog.record(backlog)
        beat = Heartbeat(
            consumer=self._name,
            state=self._state,
            last_batch_size=self._last_batch_size,
            pending=backlog.pending if backlog is not None else None,
            unread=backlog.unread if backlog is not None else None,
        )
        write_heartbeat(self._redis, self._settings, beat)
        self.metrics.last_heartbeat.set((), time.time())
        self._last_beat_at = time.monotonic()
        self._beaten_state = self._state

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, _PAUSE_SLICE_SECONDS))

    def _process(
        self, raw_entries: Sequence[RawEntry], *, first_delivery: bool = False
    ) -> BatchOutcome:
        self._batches += 1
        first, last = as_text(raw_entries[0][0]), as_text(raw_entries[-1][0])
        # every line logged while the batch is handled names it: its number and stream ids
        with log_fields(batch=f"{self._name}#{self._batches}", stream_ids=f"{first}..{last}"):
            return self._process_batch(raw_entries, first_delivery=first_delivery)

    def _process_batch(
        self, raw_entries: Sequence[RawEntry], *, first_delivery: bool
    ) -> BatchOutcome:
        ids = [as_text(stream_id) for stream_id, _ in raw_entries]
        counts = {} if first_delivery else self._delivery_counts(ids)
        entries = [
            StreamEntry(
                stream_id=stream_id,
                fields=cast("dict[bytes, bytes] | dict[str, str]", fields or {}),
                delivery_count=counts.get(stream_id, 1),
            )
            for stream_id, (_, fields) in zip(ids, raw_entries, strict=True)
        ]
        self._last_batch_size = len(entries)
        started = time.perf_counter()
        result = self._store(entries)
        if result is None:
            return BatchOutcome(entries=len(entries))
        stored_at = time.time()
        self._record_batch(result, time.perf_counter() - started, stored_at)
        if result.ackable:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(self._stream, self._group, *result.ackable)
            pipe.execute()
            self.metrics.entries_acknowledged.inc((), len(result.ackable))
        # Draining a long backlog is one loop iteration; keep the heartbeat fresh meanwhile.
        if time.monotonic() - self._last_beat_at >= self._settings.worker_heartbeat_ttl_seconds / 3:
            self.beat()
        log.debug(
            "batch of %d entries: %d rows inserted, %d acked, %d deferred, %d dead-lettered",
            len(entries),
            result.rows_inserted,
            len(result.ackable),
            len(result.deferred),
            len(result.dead_lettered),
        )
        return BatchOutcome(
            entries=len(entries),
            rows=result.rows_inserted,
            acked=len(result.ackable),
            deferred=len(result.deferred),
            dead_lettered=len(result.dead_lettered),
        )

    def _store(self, entries: list[StreamEntry]) -> StoreResult | None:
        """The writer's result, retried while the database is down; None if stopped meanwhile."""
        attempt = 0
        while True:
            try:
                result = self._writer.store(entries)
            except SQLAlchemyError as exc:
                self.metrics.database_up.set((), 0.0)
                if self._stop_requested:
                    log.warning(
                        "stopping with %d entries unwritten (%s); they stay pending",
                        len(entries),
                        _first_line(exc),
                    )
                    return None
                delay = backoff_delay(
                    attempt, cap=self._settings.worker_retry_max_seconds, rng=self._rng
                )
                attempt += 1
                log.warning(
                    "database write of %d entries failed (%s), retry %d in %.2fs",
                    len(entries),
                    _first_line(exc),
                    attempt,
                    delay,
                )
                self._state = "retrying-database"
                try:
                    self.beat()
                except REDIS_OUTAGE_ERRORS as beat_error:
                    # The batch is still in hand; Redis only matters again at its XACK.
                    log.debug("heartbeat not written: %s", beat_error)
                self._pause(delay)
                continue
            self.metrics.database_up.set((), 1.0)
            if attempt:
                log.info("database write succeeded after %d retries", attempt)
                self._state = "stopping" if self._stop_requested else "running"
            return result

    def _record_batch(self, result: StoreResult, seconds: float, stored_at: float) -> None:
        metrics = self.metrics
        metrics.rows_stored.inc((), result.rows_inserted)
        metrics.dead_letters.inc((), len(result.dead_lettered))
        metrics.conflicts.inc((), result.rows_conflicting)
        metrics.feedback_stored.inc((), result.feedback_stored)
        metrics.feedback_duplicates.inc((), result.feedback_duplicates)
        metrics.store_duration.observe((), seconds)
        metrics.batch_rows.observe((), len(result.served_at))
        metrics.lag.observe_many((), (max(0.0, stored_at - t) for t in result.served_at))

    def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        """How often the group has delivered each entry, from the pending entries list."""
        if not ids:
            return {}
        ordered = sorted(ids, key=stream_id_key)
        # One range query covers a batch of our own pending entries, which are contiguous for us.
        rows = self._redis.xpending_range(
            self._stream,
            self._group,
            min=ordered[0],
            max=ordered[-1],
            count=len(ids),
            consumername=self._name,
        )
        counts = _counts(rows)
        missing = [stream_id for stream_id in ids if stream_id not in counts]
        if missing:
            # Claimed batches can interleave with other entries of ours; ask for each one left.
            pipe = self._redis.pipeline(transaction=False)
            for stream_id in missing:
                pipe.xpending_range(
                    self._stream, self._group, min=stream_id, max=stream_id, count=1
                )
            for found in pipe.execute():
                counts.update(_counts(found))
        wanted = set(ids)
        return {stream_id: n for stream_id, n in counts.items() if stream_id in wanted}


def stream_entries(response: Any) -> list[RawEntry]:
    """The (id, fields) pairs of an XREADGROUP reply, in either of redis-py's reply shapes."""
    if not response:
        return []
    per_stream: Iterable[Any] = (
        response.values() if isinstance(response, dict) else (item[1] for item in response)
    )
    entries: list[RawEntry] = []
    for items in per_stream:
        # The RESP3 legacy shape wraps each stream's entries in one more list.
        if items and isinstance(items[0], list):
            items = items[0]
        entries.extend(item for item in items if item[0] is not None)
    return entries


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """Sort key of a stream id: "1700000000000-10" comes after "1700000000000-9"."""
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)


def _counts(rows: Any) -> dict[str, int]:
    return {as_text(row["message_id"]): int(row["times_delivered"]) for row in rows}


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
