"""The feedback data plane: check ground truth against the prediction it is about, and append it
to the ledger the way predictions are (the stream, or the spool while Redis cannot take it).

A row's feedback is checked against the stored prediction: the request must exist and have the
row, and the actual must be something the model that served it could answer (see
`berth_common.feedback`). A request that is not stored yet may still be on its way (the worker
stores a prediction within about a second; longer through a backlog or an outage): its feedback
is accepted unchecked (`validated: false`) and the worker checks it when it stores it. Only when
the ledger can tell that the request is nowhere is it unknown (404): Redis answers, this API's
spool is empty, no stream entry waiting for a worker (unread or pending) holds a prediction of
it, and, asked after that, the database has none either.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, TEXT
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from berth_api.errors import FieldError, InvalidInput, PredictionNotFound
from berth_api.ledger.gateway import RedisGateway
from berth_api.protocols.feedback import (
    MAX_LISTED_PROBLEMS,
    AcceptedRow,
    BulkFeedbackAccepted,
    BulkLine,
    BulkProblem,
    BulkUpload,
    FeedbackAccepted,
    FeedbackBody,
    LineProblem,
)
from berth_api.schemas import ModelRef
from berth_api.serving.registry import ModelRegistry
from berth_common.feedback import (
    Actual,
    ActualRefused,
    OutcomeSpec,
    infer_spec,
    normalize_actual,
)
from berth_common.ledger import RECORDS_FIELD, FeedbackRecord
from berth_common.logconfig import add_log_fields
from berth_common.settings import ApiSettings

logger = logging.getLogger(__name__)

# Stream entries the check for waiting predictions reads at most, and the bytes of records it
# scans at most (inside Redis, which does nothing else meanwhile): beyond either, the ledger
# cannot tell, and feedback for requests not stored yet is accepted unchecked.
WAITING_SCAN_ENTRIES = 2000
WAITING_SCAN_BYTES = 4_000_000

# The request ids held by the stream entries no worker has acknowledged (unread, or pending), of
# those asked for. Returns -1 when it cannot tell: more entries or bytes than the limits.
#   KEYS[1] stream; ARGV: group, entry limit, byte limit, records field, request ids...
_WAITING_SCRIPT = """
local group, limit, budget, field = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local last = '0-0'
for _, info in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #info, 2 do
    if info[i] == 'name' then name = info[i + 1] end
    if info[i] == 'last-delivered-id' then delivered = info[i + 1] end
  end
  if name == group then last = delivered end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', limit + 1)
if #entries > limit then return -1 end
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], group, '-', '+', limit + 1)
if ok then
  if #pending + #entries > limit then return -1 end
  for _, item in ipairs(pending) do
    local found = redis.call('XRANGE', KEYS[1], item[1], item[1])
    if #found > 0 then table.insert(entries, found[1]) end
  end
end
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local seen, out, scanned = {}, {}, 0
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == field then
      local records = fields[i + 1]
      scanned = scanned + #records
      if scanned > budget then return -1 end
      for id in string.gmatch(records, '"request_id":"([^"]*)"') do
        if wanted[id] and not seen[id] then
          seen[id] = true
          table.insert(out, id)
        end
      end
    end
  end
end
return out
"""

_LOOKUP = text(
    """
    SELECT p.request_id, p.model_name, p.model_version, count(*) AS rows,
           (array_agg(p.prediction))[1] AS prediction,
           coalesce(bool_or(jsonb_typeof(p.probabilities) = 'object'), false) AS probabilities,
           v.task, v.classes
    FROM predictions p
    LEFT JOIN model_versions v USING (model_name, model_version)
    WHERE p.request_id = ANY(:request_ids)
    GROUP BY p.request_id, p.model_name, p.model_version, v.task, v.classes
    """
).bindparams(bindparam("request_ids", type_=ARRAY(TEXT)))


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """What feedback is checked against: the model version that served a stored request, how
    many rows it had, and what that version answers."""

    model: ModelRef
    rows: int
    spec: OutcomeSpec


class FeedbackService:
    def __init__(
        self,
        settings: ApiSettings,
        registry: ModelRegistry,
        engine: Engine,
        redis: Redis,
        gateway: RedisGateway,
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._engine = engine
        self._redis = redis
        self._gateway = gateway

    async def submit(self, request_id: str, body: FeedbackBody) -> FeedbackAccepted:
        """Accepts one request's feedback, or raises: PredictionNotFound (the ledger can tell it
        is unknown), InvalidInput (a row it does not have, an actual its model cannot answer)."""
        given = body.by_row()
        limit = self._settings.max_batch_rows
        if len(given) > limit:
            raise _invalid([(_form(body), f"a request has at most {limit} rows (MAX_BATCH_ROWS)")])
        stored = (await self.stored([request_id])).get(request_id)
        if stored is None and request_id in await self.unknown([request_id]):
            raise PredictionNotFound(
                f"no prediction was stored or is on its way for request {request_id!r}"
            )
        actuals: list[tuple[int, Actual]] = []
        errors: list[tuple[str, str]] = []
        for position, (row_index, actual) in enumerate(given):
            where = f"actuals[{position}]" if body.actuals is not None else f"rows[{position}]"
            try:
                actuals.append((row_index, self._checked(actual, row_index, stored)))
            except ActualRefused as exc:
                field = where if body.actuals is not None else f"{where}.actual"
                errors.append((field, str(exc)))
            except _RowOutOfRange as exc:
                errors.append((f"{where}.row_index", str(exc)))
        if stored is not None and body.actuals is not None and len(given) != stored.rows:
            errors.insert(
                0, ("actuals", f"the request has {stored.rows} rows; send one actual per row")
            )
        if errors:
            raise _invalid(errors)
        records = await self._append([(request_id, row, actual) for row, actual in actuals], "api")
        return FeedbackAccepted(
            request_id=request_id,
            validated=stored is not None,
            model=stored.model if stored is not None else None,
            rows=[
                AcceptedRow(row_index=r.row_index, actual=r.actual, feedback_id=r.feedback_id)
                for r in records
            ],
        )

    async def submit_bulk(self, upload: BulkUpload) -> BulkFeedbackAccepted:
        """Accepts the lines that can be, and says why the others were not; InvalidInput when
        none can."""
        problems = list(upload.problems)
        request_ids = sorted({line.request_id for line in upload.lines})
        stored = await self.stored(request_ids)
        unknown = await self.unknown([r for r in request_ids if r not in stored])
        accepted: list[tuple[BulkLine, Actual]] = []
        for line in upload.lines:
            if line.request_id in unknown:
                problems.append(
                    BulkProblem(line.line, "request_id", "no prediction was stored for it")
                )
                continue
            try:
                actual = self._checked(line.actual, line.row_index, stored.get(line.request_id))
            except ActualRefused as exc:
                problems.append(BulkProblem(line.line, "actual", str(exc)))
                continue
            except _RowOutOfRange as exc:
                problems.append(BulkProblem(line.line, "row_index", str(exc)))
                continue
            accepted.append((line, actual))
        problems.sort(key=lambda problem: problem.line)
        if not accepted:
            shown = problems[:MAX_LISTED_PROBLEMS]
            detail = "; ".join(f"line {p.line}: {p.field}: {p.message}" for p in shown[:3])
            raise InvalidInput(f"no line was accepted: {detail}", [p.field_error() for p in shown])
        records = await self._append(
            [(line.request_id, line.row_index, actual) for line, actual in accepted], "bulk"
        )
        return BulkFeedbackAccepted(
            lines=upload.read,
            accepted=len(records),
            unvalidated=sum(1 for line, _ in accepted if line.request_id not in stored),
            rejected=len(problems),
            problems=[
                LineProblem(line=p.line, field=p.field, message=p.message)
                for p in problems[:MAX_LISTED_PROBLEMS]
            ],
        )

    async def _append(
        self, rows: list[tuple[str, int, Actual]], source: Literal["api", "bulk"]
    ) -> list[FeedbackRecord]:
        """The accepted rows, each with a feedback id of its own, kept in the ledger."""
        received_at = datetime.now(UTC)
        records = [
            FeedbackRecord(
                feedback_id=uuid.uuid4().hex,
                request_id=request_id,
                row_index=row_index,
                actual=actual,
                received_at=received_at,
                source=source,
            )
            for request_id, row_index, actual in rows
        ]
        where = await self._gateway.append_feedback(records)
        # the access log line says where they went, as for predictions
        add_log_fields(ledger_entry=where)
        return records

    def _checked(self, actual: Actual, row_index: int, stored: StoredRequest | None) -> Actual:
        if isinstance(actual, str) and len(actual) > self._settings.max_string_length:
            raise ActualRefused(
                f"the actual is longer than {self._settings.max_string_length} characters"
            )
        if stored is None:
            return actual  # the worker checks it once the prediction is stored
        if row_index >= stored.rows:
            raise _RowOutOfRange(
                f"row_index is out of range: the request has {stored.rows} rows "
                f"(0 to {stored.rows - 1})"
            )
        return normalize_actual(actual, stored.spec)

    async def stored(self, request_ids: Collection[str]) -> dict[str, StoredRequest]:
        """The stored requests among these; none while the database cannot be read (the
        feedback is then accepted unchecked, as for a request not stored yet)."""
        if not request_ids:
            return {}
        try:
            rows = await run_in_threadpool(self._lookup, sorted(request_ids))
        except SQLAlchemyError as exc:
            logger.warning("feedback accepted unchecked: the ledger database: %r", exc)
            return {}
        return {row["request_id"]: self._stored_request(row) for row in rows}

    def _lookup(self, request_ids: list[str]) -> list[dict[str, Any]]:
        with self._engine.connect() as connection:
            result = connection.execute(_LOOKUP, {"request_ids": request_ids})
            return [dict(row) for row in result.mappings()]

    def _stored_request(self, row: dict[str, Any]) -> StoredRequest:
        name, version = row["model_name"], row["model_version"]
        served = self._registry.models.get((name, version))
        if served is not None:
            metadata = served.bundle.metadata
            spec = infer_spec(metadata.task, metadata.classes, row["prediction"], False)
        else:
            spec = infer_spec(row["task"], row["classes"], row["prediction"], row["probabilities"])
        return StoredRequest(ModelRef(name=name, version=version), int(row["rows"]), spec)

    async def unknown(self, request_ids: Collection[str]) -> set[str]:
        """The requests, among these that are not stored, that the ledger can tell are nowhere:
        not spooled, not waiting in the stream, and (asked last) still not stored."""
        if not request_ids:
            return set()
        if await run_in_threadpool(self._gateway.spool.has_entries):
            return set()
        waiting = await self._waiting(request_ids)
        if waiting is None:
            return set()
        candidates = [request_id for request_id in request_ids if request_id not in waiting]
        if not candidates:
            return set()
        try:
            stored_now = await run_in_threadpool(self._lookup, sorted(candidates))
        except SQLAlchemyError:
            return set()
        # stored meanwhile: acknowledged after the scan
        return set(candidates) - {row["request_id"] for row in stored_now}

    async def _waiting(self, request_ids: Iterable[str]) -> set[str] | None:
        """Which of the requests a stream entry not yet acknowledged holds; None: cannot tell."""
        settings = self._settings
        try:
            found = await asyncio.wait_for(
                self._redis.eval(
                    _WAITING_SCRIPT,
                    1,
                    settings.ledger_stream,
                    settings.ledger_group,
                    WAITING_SCAN_ENTRIES,
                    WAITING_SCAN_BYTES,
                    RECORDS_FIELD,
                    *request_ids,
                ),
                timeout=settings.redis_timeout_seconds,
            )
        except (RedisError, OSError, TimeoutError) as exc:
            logger.info("cannot tell which requests are on their way: %r", exc)
            return None
        if not isinstance(found, list):
            return None
        return {item.decode() if isinstance(item, bytes) else str(item) for item in found}


def _form(body: FeedbackBody) -> str:
    return "actuals" if body.actuals is not None else "rows"


class _RowOutOfRange(ValueError):
    pass


def _invalid(errors: list[tuple[str, str]]) -> InvalidInput:
    detail = "; ".join(f"{field}: {message}" for field, message in errors[:3])
    return InvalidInput(detail, [FieldError(field, message) for field, message in errors])
