"""The prediction data plane: validate, serve from cache or model, record, answer.

Every door into the API calls `PredictionService.predict` and nothing else, so every one goes
through the same validation, idempotency check, cache and ledger path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import RedisError

from berth_api.errors import IdempotencyConflict
from berth_api.ledger.gateway import Completion, Lookup, RedisGateway
from berth_api.monitoring import ApiMetrics
from berth_api.serving.answer import Answer
from berth_api.serving.cache import row_digest
from berth_api.serving.features import rows_from_instances
from berth_api.serving.idempotency import Claim, ClaimRecord, ClaimState, fingerprint
from berth_api.serving.predictor import ModelOutput
from berth_api.serving.registry import ServedModel
from berth_common.keys import RedisKeys
from berth_common.ledger import ServedRows
from berth_common.logconfig import add_log_fields

logger = logging.getLogger(__name__)

# How often a retry looks whether the first request with its id has been answered.
CLAIM_POLL_SECONDS = 0.01


class PredictionService:
    def __init__(
        self,
        gateway: RedisGateway,
        keys: RedisKeys,
        max_rows: int,
        max_string_length: int,
        *,
        metrics: ApiMetrics,
        idempotency_ttl_seconds: int = 86_400,
        idempotency_wait_seconds: float = 5.0,
    ) -> None:
        self._metrics = metrics
        self._gateway = gateway
        self._keys = keys
        self._max_rows = max_rows
        self._max_string_length = max_string_length
        self._idempotency_ttl = idempotency_ttl_seconds
        self._idempotency_wait = idempotency_wait_seconds

    async def predict(
        self,
        served: ServedModel,
        instances: Sequence[Any],
        request_id: str,
        *,
        idempotent: bool = False,
    ) -> Answer:
        """Answers the rows. With `idempotent` (the client named the request), the request id
        stands for this request only: a retry of it gets the first answer, recorded once, and
        another request with the id is refused with IdempotencyConflict."""
        started = time.perf_counter()
        metadata = served.bundle.metadata
        rows = rows_from_instances(
            metadata, instances, max_rows=self._max_rows, max_string_length=self._max_string_length
        )
        cache = served.cache_policy.cache
        digests = [row_digest(row) for row in rows] if cache or idempotent else []
        keys = (
            [self._keys.cache(metadata.name, metadata.version, d) for d in digests] if cache else []
        )
        claim = None
        if idempotent:
            claim = Claim(
                self._keys.idempotency(request_id),
                fingerprint(metadata.name, metadata.version, digests),
                uuid.uuid4().hex,
            )
        lookup = await self._lookup(keys, claim, len(rows))
        if cache:
            hits = sum(output is not None for output in lookup.outputs)
            labels = (metadata.name, metadata.version)
            self._metrics.cache_lookups.inc((*labels, "hit"), hits)
            self._metrics.cache_lookups.inc((*labels, "miss"), len(rows) - hits)
        if claim is not None and lookup.held_by is not None:
            try:
                answer = await self._answer_of_first(claim, lookup.held_by, request_id)
            except IdempotencyConflict:
                self._metrics.idempotency.inc(("conflict",))
                raise
            if answer is not None:
                self._metrics.idempotency.inc(("replayed",))
                return answer
            lookup = await self._lookup(keys, claim, len(rows))  # the first gave it up
            if lookup.held_by is not None:
                self._metrics.idempotency.inc(("conflict",))
                raise _in_progress(request_id)
        # Unchecked (Redis unreachable), the request is served all the same; its records carry
        # the fingerprint, and the worker keeps a conflicting one apart.
        owned = claim if claim is not None and lookup.claim_checked else None
        if claim is not None:
            self._metrics.idempotency.inc(("first" if owned is not None else "unchecked",))
        request_hash = claim.fingerprint if claim is not None else None
        try:
            return await self._serve(
                served, rows, keys, lookup, request_id, request_hash, owned, started
            )
        except BaseException:
            if owned is not None:
                await self._gateway.release(owned)
            raise

    async def _lookup(self, keys: list[str], claim: Claim | None, rows: int) -> Lookup:
        """The request's first round trip (keys: one per row, or none with the cache off); none
        at all with neither keys nor an id to claim."""
        if keys:
            return await self._gateway.lookup(keys, claim)
        if claim is None:
            return Lookup([None] * rows)
        return replace(await self._gateway.lookup([], claim), outputs=[None] * rows)

    async def _serve(
        self,
        served: ServedModel,
        rows: list[list[Any]],
        keys: list[str],
        lookup: Lookup,
        request_id: str,
        request_hash: str | None,
        claim: Claim | None,
        started: float,
    ) -> Answer:
        metadata = served.bundle.metadata
        outputs = list(lookup.outputs)
        cached = [output is not None for output in outputs]
        misses = [i for i, output in enumerate(outputs) if output is None]
        fresh: dict[str, ModelOutput] = {}
        if misses:
            computed = await served.batcher.predict([rows[i] for i in misses])
            for i, output in zip(misses, computed, strict=True):
                outputs[i] = output
                if keys:
                    fresh[keys[i]] = output
        final = [output for output in outputs if output is not None]
        latency_ms = (time.perf_counter() - started) * 1000.0
        served_at = datetime.now(UTC)
        names = metadata.feature_names
        served_rows = ServedRows(
            request_id=request_id,
            model_name=metadata.name,
            model_version=metadata.version,
            latency_ms=latency_ms,
            served_at=served_at,
            request_hash=request_hash,
            features=[dict(zip(names, row, strict=True)) for row in rows],
            predictions=[output.label for output in final],
            probabilities=[output.probabilities for output in final],
            cached=cached,
        )
        answer = Answer.of(request_id, metadata.name, metadata.version, final, cached)
        completion = None
        if claim is not None:
            completion = Completion(
                claim.key, claim.done_value(answer.json().decode()), self._idempotency_ttl
            )
        entry = await self._gateway.record(served_rows, fresh, completion)
        # the access log line then says where the records went: a stream entry the worker's log
        # names when it stores it (or the spool)
        add_log_fields(ledger_entry=entry)
        # counted once recorded: a request refused for want of a ledger was not served
        classifier = metadata.classes is not None
        self._metrics.record_answers(
            metadata.name,
            metadata.version,
            served_rows.predictions,
            [max(o.probabilities.values()) for o in final if o.probabilities],
            classifier=classifier,
        )
        return answer

    async def _answer_of_first(
        self, claim: Claim, held_by: ClaimRecord, request_id: str
    ) -> Answer | None:
        """The answer of the first request with this id, once it has one; None if it gave the
        id up unanswered (the caller claims it again)."""
        deadline = time.monotonic() + self._idempotency_wait
        record: ClaimRecord | None = held_by
        while record is not None:
            if record.fingerprint != claim.fingerprint:
                logger.warning("request id %s refused: it was used for another request", request_id)
                raise IdempotencyConflict(
                    f"request id {request_id!r} was already used for a different request (another "
                    "model, version or rows); a retry must send the same request, a new request "
                    "a new id"
                )
            if record.state is ClaimState.DONE:
                return Answer.from_json(record.payload)
            if time.monotonic() >= deadline:
                raise _in_progress(request_id)
            await asyncio.sleep(CLAIM_POLL_SECONDS)
            try:
                record = await self._gateway.claim_record(claim.key)
            except (RedisError, OSError):
                raise _in_progress(request_id) from None
        return None


def _in_progress(request_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"a request with id {request_id!r} is still being answered; retry it in a moment"
    )
