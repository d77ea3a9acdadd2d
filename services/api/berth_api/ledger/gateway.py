"""Everything the request path asks of Redis: cache reads, and for each request the ledger
append, the cache writes and the served-row count.

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
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from berth_api.coalesce import Coalescer
from berth_api.errors import LedgerUnavailable
from berth_api.ledger.spool import ClaimedSegment, LedgerSpool
from berth_api.serving.cache import decode_output, encode_output
from berth_api.serving.predictor import ModelOutput
from berth_common.keys import RedisKeys
from berth_common.ledger import MalformedEntry, PredictionRecord, decode_entry, encode_entry

logger = logging.getLogger(__name__)

SERVED_COUNTER_TTL_SECONDS = 40 * 24 * 3600
REPLAY_BATCH = 200
# Requests whose Redis work may share one pipeline.
MAX_OPS_PER_ROUND_TRIP = 256


@dataclass(frozen=True, slots=True)
class _CacheRead:
    keys: list[str]


@dataclass(frozen=True, slots=True)
class _Record:
    records: list[PredictionRecord]
    new_outputs: dict[str, ModelOutput]


# what a round trip gives each request: cached values (None: a miss), or whether it was queued
_Answer = list[ModelOutput | None] | bool


class RedisGateway:
    def __init__(
        self,
        client: Redis,
        *,
        keys: RedisKeys,
        cache_ttl_seconds: int,
        spool: LedgerSpool,
    ) -> None:
        self._client = client
        self._keys = keys
        self._stream = keys.ledger_stream
        self._ttl = cache_ttl_seconds
        self._healthy = True
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

    async def cached_outputs(self, keys: list[str]) -> list[ModelOutput | None]:
        if not self._healthy:
            return [None] * len(keys)
        answer = await self._round_trips.submit(_CacheRead(keys))
        return [None] * len(keys) if isinstance(answer, bool) else answer

    async def record(
        self, records: list[PredictionRecord], new_outputs: dict[str, ModelOutput]
    ) -> None:
        """Keeps the request's records in the stream, or else in the spool, or raises."""
        if self._healthy:
            await self._round_trips.submit(_Record(records, new_outputs))
            return
        await self._spool(encode_entry(records), records[0].request_id)

    async def _round_trip(self, ops: list[_CacheRead | _Record]) -> list[_Answer | BaseException]:
        """One pipeline for every queued request: one MGET for all their cache reads, one
        stream entry holding all their records, their cache writes, and the served counters."""
        reads = [op for op in ops if isinstance(op, _CacheRead)]
        writes = [op for op in ops if isinstance(op, _Record)]
        keys = [key for op in reads for key in op.keys]
        records = [record for op in writes for record in op.records]
        fields = encode_entry(records) if records else {}
        pipe = self._client.pipeline(transaction=False)
        if keys:
            pipe.mget(keys)
        if records:
            pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
            for op in writes:
                for key, output in op.new_outputs.items():
                    pipe.set(key, encode_output(output), ex=self._ttl)
            self._count_served(pipe, records)
        results: list[Any] = []
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._failed("round trip", exc)
        values: list[bytes | None] | None = None
        if keys and results:
            if isinstance(results[0], Exception):
                self._failed("cache read", results[0])
            else:
                values = list(results[0])
        outcome: bool | BaseException = True
        appended = (
            bool(records) and bool(results) and not isinstance(results[1 if keys else 0], Exception)
        )
        if records and not appended:
            if results:
                self._failed("ledger append", results[1 if keys else 0])
            try:
                await self._spool(fields, records[0].request_id)
            except LedgerUnavailable as exc:
                outcome = exc
        if results and (appended or not records) and (values is not None or not keys):
            self._recovered()
        answers: list[_Answer | BaseException] = []
        offset = 0
        for item in ops:
            if isinstance(item, _Record):
                answers.append(outcome)
                continue
            count = len(item.keys)
            part = values[offset : offset + count] if values is not None else [None] * count
            offset += count
            answers.append([decode_output(value) for value in part])
        return answers

    async def _spool(self, fields: dict[str, str], request_id: str) -> None:
        try:
            await run_in_threadpool(self.spool.append, fields)
        except OSError as exc:
            logger.error(
                "ledger entry of request %s (and any sharing it) neither queued nor spooled: %r",
                request_id,
                exc,
            )
            raise LedgerUnavailable(
                "the prediction could not be recorded (Redis and the local spool both failed); "
                "it was not served"
            ) from exc

    def _count_served(self, pipe: object, records: Iterable[PredictionRecord]) -> None:
        counts = Counter(self._keys.served(r.served_at) for r in records)
        for (key, field), rows in counts.items():
            pipe.hincrby(key, field, rows)  # type: ignore[attr-defined]
            pipe.expire(key, SERVED_COUNTER_TTL_SECONDS)  # type: ignore[attr-defined]

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
                                self._count_served(pipe, decode_entry(fields))
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

    async def replay_forever(self, interval_seconds: float) -> None:
        while True:
            await asyncio.sleep(interval_seconds)
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


def _entries_of(segment: ClaimedSegment) -> list[dict[str, str]]:
    return list(segment.entries())
