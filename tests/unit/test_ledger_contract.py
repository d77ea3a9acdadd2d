"""The stream entry contract between the API (encode_entry) and the worker (decode_entry)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from berth_common.ledger import (
    ENTRY_FORMAT,
    FORMAT_FIELD,
    RECORDS_FIELD,
    MalformedEntry,
    decode_entry,
    encode_entry,
    raw_entry_text,
)
from tests.factories import FEATURES, make_record


def record_json(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = make_record().model_dump(mode="json")
    payload.update(changes)
    return payload


def entry_with(records_text: str) -> dict[str, str]:
    return {FORMAT_FIELD: ENTRY_FORMAT, RECORDS_FIELD: records_text}


def test_roundtrip_keeps_every_field() -> None:
    records = [
        make_record(),
        make_record(
            row_index=1,
            prediction=2,
            probabilities=None,
            cached=True,
            served_at=datetime(2024, 5, 17, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        ),
    ]

    fields = encode_entry(records)

    assert fields[FORMAT_FIELD] == ENTRY_FORMAT
    assert decode_entry(fields) == records


def test_decode_accepts_the_bytes_redis_returns() -> None:
    fields = encode_entry([make_record(prediction=None)])
    as_bytes = {key.encode(): value.encode() for key, value in fields.items()}

    (record,) = decode_entry(as_bytes)

    assert record.prediction is None
    assert record.features == FEATURES


def test_encode_refuses_nan_instead_of_writing_invalid_json() -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_entry([make_record(features={"x": float("nan")})])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({}, "unknown entry format None", id="empty"),
        pytest.param(
            {FORMAT_FIELD: "2", RECORDS_FIELD: "[]"}, "unknown entry format '2'", id="version"
        ),
        pytest.param({FORMAT_FIELD: ENTRY_FORMAT}, "has no 'records' field", id="no-records"),
        pytest.param(entry_with("[{"), "not valid JSON", id="bad-json"),
        pytest.param(entry_with("[]"), "non-empty JSON array", id="empty-array"),
        pytest.param(entry_with(json.dumps(record_json())), "non-empty JSON array", id="object"),
        pytest.param(
            entry_with(json.dumps([record_json(served_at="2024-05-17T12:30:15")])),
            "served_at: Input should have timezone info",
            id="naive-time",
        ),
        pytest.param(
            entry_with(json.dumps([record_json(row_index=-1)])),
            "row_index: Input should be greater than or equal to 0",
            id="negative-row",
        ),
        pytest.param(
            entry_with(json.dumps([record_json(surprise=1)])),
            "surprise: Extra inputs are not permitted",
            id="extra-field",
        ),
        pytest.param(
            entry_with(json.dumps([record_json(request_id="")])), "request_id", id="no-request-id"
        ),
        pytest.param(
            entry_with(json.dumps([record_json(), {"request_id": "r"}])),
            "invalid record: row_index: Field required",
            id="second-record-invalid",
        ),
    ],
)
def test_malformed_entries_say_why(fields: dict[str, str], message: str) -> None:
    with pytest.raises(MalformedEntry, match=re.escape(message)):
        decode_entry(fields)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["features", "prediction", "probabilities", "latency_ms"])
def test_non_finite_numbers_are_malformed(field: str, constant: str) -> None:
    # json.dumps writes these bare tokens, which json.loads would accept and jsonb would not.
    placeholder = "__constant__"
    value: Any = {
        "features": {"x": placeholder},
        "prediction": placeholder,
        "probabilities": {"a": placeholder},
        "latency_ms": placeholder,
    }[field]
    text = json.dumps([record_json(**{field: value})]).replace(f'"{placeholder}"', constant)
    assert constant in text

    with pytest.raises(MalformedEntry, match=f"not valid JSON: {constant} is not valid JSON"):
        decode_entry(entry_with(text))


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    fields = {b"v": b"\xff1", b"rec\xc3": b"\x00ok"}

    text = raw_entry_text(fields)

    assert json.loads(text) == {"rec\ufffd": "\x00ok", "v": "\ufffd1"}
    with pytest.raises(MalformedEntry, match="unknown entry format"):
        decode_entry(fields)


def test_raw_entry_text_is_stable_json() -> None:
    assert raw_entry_text({"v": "1", "records": "[]"}) == '{"records": "[]", "v": "1"}'
