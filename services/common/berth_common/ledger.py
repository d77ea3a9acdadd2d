"""The ledger record contract: what the API appends to the stream and the worker stores.

One stream entry holds the records of one request (one per served row), so that a 100-row batch
costs one XADD and one entry to acknowledge, while the table keeps one row per served row. The
entry carries a format version so that a worker can refuse, loudly, an entry it does not
understand instead of storing it wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import to_json

# Format 2 added `request_hash`; format 1 entries (without it) are still read. An entry of a
# format this worker does not know is dead-lettered, loudly: upgrade workers before APIs.
ENTRY_FORMAT = "2"
READABLE_FORMATS = frozenset({"1", ENTRY_FORMAT})
FORMAT_FIELD = "v"
RECORDS_FIELD = "records"

JsonScalar = str | int | float | bool | None
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class PredictionRecord(BaseModel):
    """One served row: what was asked, what was answered, by which model, and when."""

    # (in JSON, a NaN is written as NaN, for encode_entry to find and refuse, never as null)
    model_config = ConfigDict(
        frozen=True, extra="forbid", protected_namespaces=(), ser_json_inf_nan="constants"
    )

    request_id: RequestId
    row_index: Annotated[int, Field(ge=0)]
    model_name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    # Features keyed by name, in the model's order, so SQL can say features->>'petal_length'.
    features: dict[str, JsonScalar]
    prediction: JsonScalar
    probabilities: dict[str, float] | None
    cached: bool
    latency_ms: Annotated[float, Field(ge=0)]
    served_at: AwareDatetime
    # The fingerprint of the request (model, version, rows) when the client named it with
    # X-Request-ID; the worker refuses a record whose request id is stored with another one.
    request_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class FeedbackRecord(BaseModel):
    """One served row's true outcome, sent later by a client: appended by the API to the same
    stream (or spool) as predictions, stored by the worker in `feedback`.

    Feedback entries have their own format (FEEDBACK_FORMAT, the records in the field
    FEEDBACK_FIELD), so that a worker that does not know them dead-letters them, loudly,
    rather than misreading them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # given by the API to each row it accepts: the same entry stored twice is one row
    feedback_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    request_id: RequestId
    row_index: Annotated[int, Field(ge=0)]
    actual: str | int | float | bool
    received_at: AwareDatetime
    source: Literal["api", "bulk"]


FEEDBACK_FORMAT = "f1"
FEEDBACK_FIELD = "feedback"
_FEEDBACK_FORMATS = frozenset({FEEDBACK_FORMAT})
_FORMAT_KEY = FORMAT_FIELD.encode()
_FEEDBACK_FORMAT_BYTES = FEEDBACK_FORMAT.encode()


class MalformedEntry(ValueError):
    """A stream entry that can never become ledger rows; it belongs in the dead-letter table."""


_FEEDBACK_LIST = TypeAdapter(list[FeedbackRecord])

# Parses and validates in one pass, in pydantic's Rust core: about half the cost of json.loads
# followed by model_validate, which matters to a worker that decodes every served row.
_RECORD_LIST = TypeAdapter(list[PredictionRecord])
# Tokens that pydantic's JSON parser reads as numbers and json.loads (with _reject_constant) does
# not; an entry that holds one, even inside a string, takes the careful path.
_NON_FINITE_TOKENS = ("NaN", "Infinity")
# Writes a NaN as NaN, for encode_entry to find and refuse, never as a quiet null. (pydantic
# takes the setting from the model for some fields and from the adapter for others: both say it.)
_RECORD_LIST_OUT = TypeAdapter(
    list[PredictionRecord], config=ConfigDict(ser_json_inf_nan="constants")
)


def encode_entry(records: list[PredictionRecord]) -> dict[str, str]:
    """Stream fields for one XADD carrying records: the API puts all the records of the requests
    that share a Redis round trip into one entry (each record names its request).

    Serialised in one pass by pydantic's Rust core, a third of the cost of model_dump and
    json.dumps per record. A non-finite number (the API checks rows, probabilities and outputs
    before it makes a record, so only a bug could bring one) raises ValueError rather than
    become an entry that PostgreSQL's jsonb refuses.
    """
    text = _RECORD_LIST_OUT.dump_json(records).decode()
    if any(token in text for token in _NON_FINITE_TOKENS):
        # a NaN, or only a string that contains the word: json.dumps tells them apart
        payload = [record.model_dump(mode="json") for record in records]
        text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return {FORMAT_FIELD: ENTRY_FORMAT, RECORDS_FIELD: text}


@dataclass(frozen=True, slots=True)
class ServedRows:
    """The records of one request as the API makes them: what its rows share, once, and what
    each row has of its own.

    The API records rows it has already checked (against the model's features, its outputs for
    finite numbers), so it writes them to the stream without building and validating a
    PredictionRecord per row, which cost a 100-row request a fifth of its CPU. `encode_served`
    writes the entry that `encode_entry` writes of `records()`, and the worker validates every
    record it reads, as before.
    """

    request_id: str
    model_name: str
    model_version: str
    latency_ms: float
    served_at: datetime
    request_hash: str | None
    features: list[dict[str, JsonScalar]]
    predictions: list[JsonScalar]
    probabilities: list[dict[str, float] | None]
    cached: list[bool]

    def __len__(self) -> int:
        return len(self.features)

    def fields(self) -> Iterator[dict[str, Any]]:
        """Each row's record as a PredictionRecord's field values, in its order, unchecked."""
        rows = zip(self.features, self.predictions, self.probabilities, self.cached, strict=True)
        for index, (features, prediction, probabilities, cached) in enumerate(rows):
            yield {
                "request_id": self.request_id,
                "row_index": index,
                "model_name": self.model_name,
                "model_version": self.model_version,
                "features": features,
                "prediction": prediction,
                "probabilities": probabilities,
                "cached": cached,
                "latency_ms": self.latency_ms,
                "served_at": self.served_at,
                "request_hash": self.request_hash,
            }

    def records(self) -> list[PredictionRecord]:
        """The rows as validated records."""
        return [PredictionRecord(**fields) for fields in self.fields()]


_JSON_SCALARS = (str, int, float, bool, type(None))


def encode_served(requests: Sequence[ServedRows]) -> dict[str, str]:
    """Stream fields for one XADD carrying the records of requests: `encode_entry` of their
    records, written by pydantic's serialiser straight from the plain values.

    A prediction that is not a JSON scalar, or a non-finite number (the API checks both before
    it answers, so only a bug could bring one), takes the validating path, which raises.
    """
    rows = [fields for request in requests for fields in request.fields()]
    if all(isinstance(p, _JSON_SCALARS) for request in requests for p in request.predictions):
        text = to_json(rows, inf_nan_mode="constants").decode()
        if not any(token in text for token in _NON_FINITE_TOKENS):
            return {FORMAT_FIELD: ENTRY_FORMAT, RECORDS_FIELD: text}
    return encode_entry([record for request in requests for record in request.records()])


def decode_entry(fields: dict[bytes, bytes] | dict[str, str]) -> list[PredictionRecord]:
    """Records of one stream entry, or MalformedEntry saying why there are none."""
    raw = _payload(fields, READABLE_FORMATS, RECORDS_FIELD)
    # The fast path accepts what the careful path below accepts, and gives the same records;
    # anything else, malformed or merely unusual, is left to the careful path to judge and explain.
    if not any(token in raw for token in _NON_FINITE_TOKENS):
        try:
            records = _RECORD_LIST.validate_json(raw)
        except ValidationError:
            pass
        else:
            if records:
                return records
    items = _json_array(raw, "records")
    try:
        return [PredictionRecord.model_validate(item) for item in items]
    except ValidationError as exc:
        raise MalformedEntry(f"invalid record: {_summarise(exc)}") from exc


def _payload(
    fields: dict[bytes, bytes] | dict[str, str], formats: frozenset[str], field: str
) -> str:
    """The entry's payload field, once its format is one of `formats`."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    version = text.get(FORMAT_FIELD)
    if version not in formats:
        raise MalformedEntry(f"unknown entry format {version!r}, expected one of {sorted(formats)}")
    raw = text.get(field)
    if raw is None:
        raise MalformedEntry(f"entry has no {field!r} field")
    return raw


def _json_array(raw: str, what: str) -> list[Any]:
    try:
        items: Any = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise MalformedEntry(f"{what} are not valid JSON: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise MalformedEntry(f"{what} must be a non-empty JSON array")
    return items


def is_feedback_entry(fields: dict[bytes, bytes] | dict[str, str]) -> bool:
    """Whether a stream entry says it holds feedback: a dictionary lookup or two, so that telling
    the two kinds apart costs a prediction entry nothing it would notice."""
    lookup = cast("dict[bytes | str, bytes | str]", fields)
    version = lookup.get(_FORMAT_KEY) or lookup.get(FORMAT_FIELD)
    return version in (_FEEDBACK_FORMAT_BYTES, FEEDBACK_FORMAT)


def encode_feedback_entry(records: list[FeedbackRecord]) -> dict[str, str]:
    """Stream fields for one XADD carrying feedback rows."""
    payload = [record.model_dump(mode="json") for record in records]
    return {
        FORMAT_FIELD: FEEDBACK_FORMAT,
        FEEDBACK_FIELD: json.dumps(payload, separators=(",", ":"), allow_nan=False),
    }


def decode_feedback_entry(fields: dict[bytes, bytes] | dict[str, str]) -> list[FeedbackRecord]:
    """Feedback rows of one stream entry, or MalformedEntry saying why there are none."""
    items = _json_array(_payload(fields, _FEEDBACK_FORMATS, FEEDBACK_FIELD), "feedback rows")
    try:
        return _FEEDBACK_LIST.validate_python(items)
    except ValidationError as exc:
        raise MalformedEntry(f"invalid feedback row: {_summarise(exc)}") from exc


def raw_entry_text(fields: dict[bytes, bytes] | dict[str, str]) -> str:
    """The entry as JSON text for the dead-letter table, whatever bytes it holds."""
    return json.dumps({_text(k): _text(v) for k, v in fields.items()}, sort_keys=True)


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which encode_entry never writes and PostgreSQL's jsonb
    # refuses; an entry holding them must be refused here, not fail later as a database error.
    raise ValueError(f"{name} is not valid JSON")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:5]:
        location = ".".join(str(part) for part in error["loc"])
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)
