"""Everything the request path asks of Redis: cache reads and request-id claims, and for each
request the ledger append, the cache writes, the served-row count and the answer kept for its id.

All of it goes through one pipeline at a time per process, continuously batched (`coalesce`):
whatever requests queued while the last round trip was out (cache reads of some, records of
others) goes out together in the next, as one MGET and one stream entry holding every record. A
lone request costs a round trip for its cache read and one for its record; at load, dozens of
requests share each round trip, and the worker reads one entry where it would have read dozens.

Redis failing never fails a prediction: a cache read that fails is a miss, and a ledger entry the
stream cannot take goes to the durable spool before the response is sent. Only when neither
Redis nor the spool can keep the record is the request refused (503): an answer is never sent
without its record kept somewhere.

After a failure, requests stop asking Redis (a stopped Redis can cost seconds per call, in DNS
and connect timeouts) and go straight to the spool until the replay loop, which probes Redis
in the background, finds it answering again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from berth_api.coalesce import Coalescer, pause
from berth_api.errors import LedgerUnavailable
from berth_api.ledger.spool import ClaimedSegment, LedgerSpool
from berth_api.monitoring import ApiMetrics
from berth_api.serving.cache import decode_output, encode_output
from berth_api.serving.idempotency import PENDING_TTL_SECONDS, Claim, ClaimRecord, ClaimState
from berth_api.serving.predictor import ModelOutput
from berth_common.keys import RedisKeys
from berth_common.ledger import (
    FeedbackRecord,
    MalformedEntry,
    ServedRows,
    decode_entry,
    decode_feedback_entry,
    encode_feedback_entry,
    encode_served,
    is_feedback_entry,
)
from berth_common.replies import as_text

logger = logging.getLogger(__name__)

SERVED_COUNTER_TTL_SECONDS = 40 * 24 * 3600
REPLAY_BATCH = 200
# Requests whose Redis work may share one pipeline.
MAX_OPS_PER_ROUND_TRIP = 256
# Feedback rows per stream entry: a bulk upload of many rows is a few entries, not one huge one.
FEEDBACK_ENTRY_ROWS = 1000


@dataclass(frozen=True, slots=True)
class _CacheRead:
    keys: list[str]
    claim: Claim | None = None


@dataclass(frozen=True, slots=True)
class _Record:
    rows: ServedRows
    new_outputs: dict[str, ModelOutput]
    completion: Completion | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """The answer kept for a request id, in place of its pending claim."""

    key: str
    value: str
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a request's first round trip found: cached outputs (None: a miss), and for a claimed
    request id whether this request owns it, or what another request left under it."""

    outputs: list[ModelOutput | None]
    # Redis was asked about the id (False: unreachable, the request goes on unchecked).
    claim_checked: bool = False
    # Another request's claim on the id; None when this request now owns it.
    held_by: ClaimRecord | None = None


# What a round trip gives each request: a Lookup, or where its records were kept (the stream
# entry's id, or SPOOLED).
_Answer = Lookup | str
SPOOLED = "spool"
# Every new output of a round trip into the cache, with its TTL (ARGV[1]), as one command: a
# SET apiece cost a command to pack and a reply to read for every row of a batch.
#
# The writes are kept out of the append-only file (and from any replica): the AOF is there for
# the ledger stream, and a cache rebuilds itself. Written to it, they were a third of its bytes
# per row served, and Redis rewrites the AOF, a copy of everything it holds, each time it doubles.
_CACHE_WRITE_SCRIPT = """
redis.set_repl(redis.REPL_NONE)
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
end
return #KEYS
"""
# Deletes a claim only while it is still the pending claim of the request that made it.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisGateway:
    def __init__(
        self,
        client: Redis,
        *,
        keys: RedisKeys,
        cache_ttl_seconds: int,
        spool: LedgerSpool,
        metrics: ApiMetrics,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._keys = keys
        self._stream = keys.ledger_stream
        self._ttl = cache_ttl_seconds
        self._healthy = True
        self._served_keys: dict[tuple[int, timedelta | None], tuple[str, str]] = {}
        self.spool = spool
        self._round_trips: Coalescer[_CacheRead | _Record, _Answer] = Coalescer(
            self._round_trip, max_size=MAX_OPS_PER_ROUND_TRIP
        )

    @property
    def round_trips(self) -> int:
        """Pipelines sent for requests so far; with `requests`, how much they were shared."""
        return self._round_trips.calls

    @property
    def requests(self) -> int:
        return self._round_trips.items

    @property
    def redis_available(self) -> bool:
        return self._healthy

    async def lookup(self, keys: list[str], claim: Claim | None = None) -> Lookup:
        """Cached outputs for `keys` and, with a claim, an attempt to own its request id."""
        if not self._healthy:
            return Lookup([None] * len(keys))
        answer = await self._round_trips.submit(_CacheRead(keys, claim))
        return answer if isinstance(answer, Lookup) else Lookup([None] * len(keys))

    async def record(
        self,
        rows: ServedRows,
        new_outputs: dict[str, ModelOutput],
        completion: Completion | None = None,
    ) -> str:
        """Keeps the request's records in the stream, or else in the spool, or raises; says
        where: the id of the stream entry that holds them, or SPOOLED."""
        if self._healthy:
            where = await self._round_trips.submit(_Record(rows, new_outputs, completion))
            assert isinstance(where, str)
            return where
        await self._spool(encode_served([rows]), len(rows), rows.request_id)
        return SPOOLED

    async def append_feedback(self, records: list[FeedbackRecord]) -> str:
        """Keeps feedback rows in the stream (entries of at most FEEDBACK_ENTRY_ROWS rows, added
        together with their received counts in one MULTI), or else in the spool, or raises
        LedgerUnavailable; says where: the id of the (last) stream entry, or SPOOLED."""
        entries = [
            encode_feedback_entry(records[start : start + FEEDBACK_ENTRY_ROWS])
            for start in range(0, len(records), FEEDBACK_ENTRY_ROWS)
        ]
        where = SPOOLED
        if self._healthy:
            pipe = self._client.pipeline(transaction=True)
            for fields in entries:
                pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
            self._count_received(pipe, records)
            try:
                results = await pipe.execute()
            except (RedisError, OSError) as exc:
                self._metrics.append_failures.inc()
                self._failed("feedback append", exc)
            else:
                self._recovered()
                where = as_text(results[len(entries) - 1])
        if where == SPOOLED:
            try:
                for fields in entries:
                    await run_in_threadpool(self.spool.append, fields)
            except OSError as exc:
                logger.error(
                    "feedback of request %s neither queued nor spooled: %r",
                    records[0].request_id,
                    exc,
                )
                raise LedgerUnavailable(
                    "the feedback could not be recorded (Redis and the local spool both "
                    "failed); it was not accepted"
                ) from exc
        for source, rows in Counter(record.source for record in records).items():
            self._metrics.feedback_received.inc((source,), rows)
        return where

    async def claim_record(self, key: str) -> ClaimRecord | None:
        """What another request keeps under a request id now (None: nothing, it was released).
        Raises RedisError when Redis cannot be asked."""
        raw = await self._client.get(key)
        return None if raw is None else ClaimRecord.parse(raw)

    async def release(self, claim: Claim) -> None:
        """Gives up a claim whose request was not answered, so that a retry can own the id."""
        try:
            await self._client.eval(_RELEASE_SCRIPT, 1, claim.key, claim.pending_value)
        except (RedisError, OSError) as exc:
            # the claim expires by itself within PENDING_TTL_SECONDS
            logger.warning("could not release request id claim %s: %r", claim.key, exc)

    async def _round_trip(self, ops: list[_CacheRead | _Record]) -> list[_Answer | BaseException]:
        """One pipeline for every queued request: one MGET for all their cache reads, their
        request-id claims, one stream entry holding all their records, one script writing all
        their new outputs to the cache, their answers kept for their ids, and the served
        counters."""
        reads = [op for op in ops if isinstance(op, _CacheRead)]
        writes = [op for op in ops if isinstance(op, _Record)]
        keys = [key for op in reads for key in op.keys]
        served = [op.rows for op in writes]
        recorded = sum(len(rows) for rows in served)
        fields = encode_served(served) if served else {}
        pipe = self._client.pipeline(transaction=False)
        mget_at = xadd_at = None
        claims_at: dict[int, int] = {}
        if keys:
            mget_at = len(pipe)
            pipe.mget(keys)
        for index, op in enumerate(ops):
            if isinstance(op, _CacheRead) and op.claim is not None:
                claims_at[index] = len(pipe)
                pipe.set(
                    op.claim.key, op.claim.pending_value, nx=True, get=True, ex=PENDING_TTL_SECONDS
                )
        if recorded:
            xadd_at = len(pipe)
            pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
            fresh = {key: output for op in writes for key, output in op.new_outputs.items()}
            if fresh:
                pipe.eval(
                    _CACHE_WRITE_SCRIPT,
                    len(fresh),
                    *fresh,
                    self._ttl,
                    *map(encode_output, fresh.values()),
                )
            for op in writes:
                if op.completion is not None:
                    completion = op.completion
                    pipe.set(completion.key, completion.value, ex=completion.ttl_seconds)
            self._count_served(pipe, ((rows.served_at, len(rows)) for rows in served))
        results: list[Any] = []
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._failed("round trip", exc)
        values: list[bytes | None] | None = None
        if mget_at is not None and results:
            if isinstance(results[mget_at], Exception):
                self._failed("cache read", results[mget_at])
            else:
                values = list(results[mget_at])
        outcome: str | BaseException = SPOOLED
        appended = xadd_at is not None and bool(results) and not _failed(results[xadd_at])
        if appended and xadd_at is not None:
            self._metrics.records_appended.inc(("stream",), recorded)
            outcome = as_text(results[xadd_at])
        elif recorded:
            self._metrics.append_failures.inc()
            if results and xadd_at is not None:
                self._failed("ledger append", results[xadd_at])
            try:
                await self._spool(fields, recorded, served[0].request_id)
            except LedgerUnavailable as exc:
                outcome = exc
        if results and (appended or not recorded) and (values is not None or not keys):
            self._recovered()
        answers: list[_Answer | BaseException] = []
        offset = 0
        for index, item in enumerate(ops):
            if isinstance(item, _Record):
                answers.append(outcome)
                continue
            count = len(item.keys)
            part = values[offset : offset + count] if values is not None else [None] * count
            offset += count
            outputs = [decode_output(value) for value in part]
            answers.append(self._claim_outcome(outputs, results, claims_at.get(index)))
        return answers

    def _claim_outcome(
        self, outputs: list[ModelOutput | None], results: list[Any], at: int | None
    ) -> Lookup:
        if at is None or not results:
            return Lookup(outputs)
        previous = results[at]
        if _failed(previous):
            self._failed("request id claim", previous)
            return Lookup(outputs)
        if previous is None:
            return Lookup(outputs, claim_checked=True)
        held_by = ClaimRecord.parse(previous)
        if held_by is None:
            # not a value Berth writes: say so, and treat the id as taken by an unknown request
            logger.warning("request id key holds a value Berth did not write; refusing the id")
            held_by = ClaimRecord("", ClaimState.DONE, "")
        return Lookup(outputs, claim_checked=True, held_by=held_by)

    async def _spool(self, fields: dict[str, str], rows: int, request_id: str) -> None:
        try:
            await run_in_threadpool(self.spool.append, fields)
            self._metrics.records_appended.inc(("spool",), rows)
        except OSError as exc:
            self._metrics.records_lost.inc((), rows)
            logger.error(
                "ledger entry of request %s (and any sharing it) neither queued nor spooled: %r",
                request_id,
                exc,
            )
            raise LedgerUnavailable(
                "the prediction could not be recorded (Redis and the local spool both failed); "
                "it was not served"
            ) from exc

    def _count_received(self, pipe: object, records: Iterable[FeedbackRecord]) -> None:
        counts = Counter(self._keys.feedback_received(r.received_at) for r in records)
        for (key, field), rows in counts.items():
            pipe.hincrby(key, field, rows)  # type: ignore[attr-defined]
            pipe.expire(key, SERVED_COUNTER_TTL_SECONDS)  # type: ignore[attr-defined]

    def _count_replayed(self, pipe: object, fields: dict[str, str]) -> None:
        """Counts a spooled entry as served or received as it enters the stream: the counts
        that its first append would have made."""
        if is_feedback_entry(fields):
            self._count_received(pipe, decode_feedback_entry(fields))
        else:
            self._count_served(pipe, ((r.served_at, 1) for r in decode_entry(fields)))

    def _count_served(self, pipe: object, served: Iterable[tuple[datetime, int]]) -> None:
        """Counts rows served, given as (when, how many rows)."""
        counts: Counter[tuple[str, str]] = Counter()
        for served_at, rows in served:
            counts[self._served_key(served_at)] += rows
        for (key, field), rows in counts.items():
            pipe.hincrby(key, field, rows)  # type: ignore[attr-defined]
            pipe.expire(key, SERVED_COUNTER_TTL_SECONDS)  # type: ignore[attr-defined]

    def _served_key(self, served_at: datetime) -> tuple[str, str]:
        """The counter of served_at's minute: formatted once a minute, not for every request."""
        minute = (int(served_at.timestamp()) // 60, served_at.utcoffset())
        key = self._served_keys.get(minute)
        if key is None:
            if len(self._served_keys) > 4:
                self._served_keys.clear()
            key = self._served_keys[minute] = self._keys.served(served_at)
        return key

    async def probe(self) -> bool:
        """Whether Redis answers; marks it available again for requests when it does."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self._failed("ping", exc)
            return False
        self._recovered()
        return True

    async def replay_spool(self) -> int:
        """Moves spooled entries into the stream, oldest first; returns how many moved."""
        if not await run_in_threadpool(self.spool.has_entries):
            return 0
        if not await self.probe():
            return 0
        moved = 0
        segments = await run_in_threadpool(self.spool.claim)
        try:
            while segments:
                segment = segments.pop(0)
                entries = await run_in_threadpool(_entries_of, segment)
                try:
                    for start in range(0, len(entries), REPLAY_BATCH):
                        pipe = self._client.pipeline(transaction=False)
                        for fields in entries[start : start + REPLAY_BATCH]:
                            pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
                            # a malformed entry is still queued: the worker dead-letters it
                            with contextlib.suppress(MalformedEntry):
                                self._count_replayed(pipe, fields)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    logger.warning("spool replay of %s interrupted: %r", segment.path.name, exc)
                    segment.release()
                    return moved
                await run_in_threadpool(segment.finish)
                moved += len(entries)
                logger.info("replayed %d spooled entries from %s", len(entries), segment.path.name)
        finally:
            for segment in segments:
                segment.release()
        return moved

    async def replay_forever(self, interval_seconds: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, interval_seconds)
            if stop.is_set():
                return
            try:
                if not self._healthy:
                    await self.probe()
                await self.replay_spool()
            except Exception:  # the loop must outlive any single failure; it is logged
                logger.exception("spool replay failed")

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._healthy:
            logger.warning("redis %s failed, serving without it: %r", what, exc)
        self._healthy = False

    def _recovered(self) -> None:
        if not self._healthy:
            logger.info("redis reachable again")
        self._healthy = True


def _failed(result: Any) -> bool:
    return isinstance(result, Exception)


def _entries_of(segment: ClaimedSegment) -> list[dict[str, str]]:
    return list(segment.entries())
