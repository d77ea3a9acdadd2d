"""Everything the request path asks of Redis: cache reads, and for each request the ledger
append, the cache writes and the served-row count.

All of it goes through one pipeline at a time per process, continuously batched (`coalesce`):
whatever requests queued while the last round trip was out (cache reads of some, ledger entries
of others) goes out together in the next. A lone request costs a round trip for its cache read
and one for its record; at load, dozens of requests share each round trip.

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
from datetime import datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from berth_api.cache import decode_output, encode_output
from berth_api.coalesce import Coalescer
from berth_api.errors import LedgerUnavailable
from berth_api.predictor import ModelOutput
from berth_api.spool import ClaimedSegment, LedgerSpool
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
    fields: dict[str, str]
    new_outputs: dict[str, ModelOutput]


# what a round trip gives each request: cached values (None: a miss), or whether it was queued
_Answer = list[ModelOutput | None] | bool


def served_counter(prefix: str, served_at: datetime) -> tuple[str, str]:
    """Hash key (one per UTC day) and field (minute) counting rows served in that minute."""
    return f"{prefix}:served:{served_at:%Y-%m-%d}", f"{served_at:%H:%M}"


class RedisGateway:
    def __init__(
        self,
        client: Redis,
        *,
        stream: str,
        key_prefix: str,
        cache_ttl_seconds: int,
        spool: LedgerSpool,
    ) -> None:
        self._client = client
        self._stream = stream
        self._prefix = key_prefix
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
        """Keeps the request's ledger entry in the stream, or else in the spool, or raises."""
        fields = encode_entry(records)
        if self._healthy and await self._round_trips.submit(_Record(records, fields, new_outputs)):
            return
        await self._spool(records, fields)

    async def _round_trip(self, ops: list[_CacheRead | _Record]) -> list[_Answer | BaseException]:
        """One pipeline for every queued request: its reads, its ledger appends, its cache
        writes, and the served counters summed over the whole batch."""
        pipe = self._client.pipeline(transaction=False)
        served: list[PredictionRecord] = []
        for op in ops:
            if isinstance(op, _CacheRead):
                pipe.mget(op.keys)
            else:
                pipe.xadd(self._stream, op.fields)  # type: ignore[arg-type]
                for key, output in op.new_outputs.items():
                    pipe.set(key, encode_output(output), ex=self._ttl)
                served.extend(op.records)
        self._count_served(pipe, served)
        try:
            results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._failed("round trip", exc)
            return [[None] * len(op.keys) if isinstance(op, _CacheRead) else False for op in ops]
        answers: list[_Answer | BaseException] = []
        position = 0
        for op in ops:
            result = results[position]
            if isinstance(op, _CacheRead):
                position += 1
                if isinstance(result, Exception):
                    self._failed("cache read", result)
                    answers.append([None] * len(op.keys))
                else:
                    answers.append([decode_output(value) for value in result])
            else:
                position += 1 + len(op.new_outputs)
                if isinstance(result, Exception):
                    self._failed("ledger append", result)
                answers.append(not isinstance(result, Exception))
        if all(a is not False for a in answers):
            self._recovered()
        return answers

    async def _spool(self, records: list[PredictionRecord], fields: dict[str, str]) -> None:
        try:
            await run_in_threadpool(self.spool.append, fields)
        except OSError as exc:
            logger.error(
                "ledger entry of request %s neither queued nor spooled: %r",
                records[0].request_id,
                exc,
            )
            raise LedgerUnavailable(
                "the prediction could not be recorded (Redis and the local spool both failed); "
                "it was not served"
            ) from exc

    def _count_served(self, pipe: object, records: Iterable[PredictionRecord]) -> None:
        counts = Counter(served_counter(self._prefix, r.served_at) for r in records)
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
