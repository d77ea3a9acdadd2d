"""The stream entry contract between the API (encode_entry) and the worker (decode_entry)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from berth_common.ledger import (
    ENTRY_FORMAT,
    FORMAT_FIELD,
    RECORDS_FIELD,
    MalformedEntry,
    PredictionRecord,
    ServedRows,
    decode_entry,
    encode_entry,
    encode_served,
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
    with pytest.raises(ValueError, match="JSON compliant"):
        encode_entry([make_record(), make_record(probabilities={"a": float("inf")})])


def test_words_that_name_non_finite_numbers_are_only_words() -> None:
    records = [make_record(features={"x": "NaN", "y": "-Infinity"}, prediction="NaN")]
    fields = encode_entry(records)
    assert json.loads(fields[RECORDS_FIELD])[0]["features"] == {"x": "NaN", "y": "-Infinity"}
    assert decode_entry(fields) == records


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({}, "unknown entry format None", id="empty"),
        pytest.param(
            {FORMAT_FIELD: "3", RECORDS_FIELD: "[]"}, "unknown entry format '3'", id="version"
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


def careful_decode(records_text: str) -> list[PredictionRecord] | None:
    """The contract spelled out the slow way: json.loads refusing non-finite numbers, then one
    model_validate per record; None where decode_entry must refuse the entry."""

    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        items = json.loads(records_text, parse_constant=refuse)
        if not isinstance(items, list) or not items:
            return None
        return [PredictionRecord.model_validate(item) for item in items]
    except ValueError:  # ValidationError is one
        return None


CANONICAL = json.dumps([record_json()])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("", "", id="canonical"),
        pytest.param('"req-1"', '"NaN and Infinity in a string"', id="non-finite-word-in-string"),
        pytest.param("5.1", "NaN", id="nan"),
        pytest.param("5.1", "1e400", id="overflow-to-inf"),
        pytest.param("5.1", "1E-400", id="underflow"),
        pytest.param("5.1", "123456789012345678901234567890", id="big-int"),
        pytest.param("5.1", "-0.0", id="negative-zero"),
        pytest.param("5.1", "0.1000000000000000055511151231257827", id="long-float"),
        pytest.param('"req-1"', '"\\ud83d\\ude00 \\u00e9 \\t\\n\\\\ \\u0001"', id="escapes"),
        pytest.param('"req-1"', '"\\ud800"', id="lone-surrogate"),
        pytest.param('"req-1"', '"a\\u0000b"', id="escaped-nul"),
        pytest.param('"req-1"', '"a\tb"', id="raw-tab-in-string"),
        pytest.param('"req-1"', '"a\x7fb"', id="raw-del-in-string"),
        pytest.param('"req-1"', '"a\\qb"', id="bad-escape"),
        pytest.param('"row_index": 0', '"row_index": "3"', id="row-index-as-string"),
        pytest.param('"row_index": 0', '"row_index": 3.0', id="row-index-as-float"),
        pytest.param('"row_index": 0', '"row_index": true', id="row-index-as-bool"),
        pytest.param('"row_index": 0', '"row_index": 00', id="leading-zero"),
        pytest.param('"cached": false', '"cached": "yes"', id="cached-as-string"),
        pytest.param('"cached": false', '"cached": 0', id="cached-as-int"),
        pytest.param('"latency_ms": 1.75', '"latency_ms": "1.75"', id="latency-as-string"),
        pytest.param('"2024-05-17T12:30:15.250000Z"', "1715949015", id="served-at-as-unix"),
        pytest.param('"2024-05-17T12:30:15.250000Z"', '"2024-05-17"', id="served-at-date-only"),
        pytest.param('"2024-05-17T12:30:15.250000Z"', '"2024-05-17T14:30:15+02:00"', id="offset"),
        pytest.param("0.97", "1", id="probability-as-int"),
        pytest.param('"note": null', '"note": null, "note": 1', id="duplicate-key"),
        pytest.param('"note": null', '"note": [1]', id="nested-feature"),
        pytest.param('"prediction": "setosa"', '"prediction": "1"', id="numeric-string-label"),
        pytest.param("[{", "[\u00a0{", id="unicode-whitespace"),
        pytest.param("}]", "},]", id="trailing-comma"),
        pytest.param("}]", "}] x", id="trailing-garbage"),
        pytest.param("[{", "\ufeff[{", id="byte-order-mark"),
        pytest.param(CANONICAL, "[]", id="empty-array"),
        pytest.param(CANONICAL, "[[]]", id="array-of-array"),
        pytest.param(CANONICAL, f"[{CANONICAL[1:-1]}, {CANONICAL[1:-1]}]", id="two-records"),
    ],
)
def test_decode_agrees_with_the_careful_decoding(old: str, new: str) -> None:
    # decode_entry takes a fast path for the usual entry; whatever the input, it must accept
    # exactly what the careful decoding accepts and give the same records.
    records_text = CANONICAL.replace(old, new, 1)
    assert records_text != CANONICAL or old == new
    expected = careful_decode(records_text)

    for fields in (entry_with(records_text), as_redis_bytes(entry_with(records_text))):
        if expected is None:
            with pytest.raises(MalformedEntry):
                decode_entry(fields)
        else:
            assert decode_entry(fields) == expected


def as_redis_bytes(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {key.encode(): value.encode() for key, value in fields.items()}


def served(**changes: Any) -> ServedRows:
    values: dict[str, Any] = {
        "request_id": "req-9",
        "model_name": "iris",
        "model_version": "3",
        "latency_ms": 0.1 + 0.2,
        "served_at": datetime(
            2024, 5, 17, 18, 0, 15, 123456, tzinfo=timezone(timedelta(hours=5.5))
        ),
        "request_hash": None,
        "features": [
            dict(FEATURES),
            {"a": 2**70, "b": -(2**63), "c": None, "d": True, "e": 1e-300},
        ],
        "predictions": ["setosa", 2.5],
        "probabilities": [{"setosa": 0.97, "versicolor": 0.03}, None],
        "cached": [False, True],
    }
    values.update(changes)
    return ServedRows(**values)


def test_served_rows_are_the_records_they_stand_for() -> None:
    rows = served()
    assert list(next(rows.fields())) == list(PredictionRecord.model_fields)
    records = rows.records()
    assert [r.row_index for r in records] == [0, 1]
    assert records[1].features["a"] == 2**70
    assert records[1].cached is True
    assert records[1].probabilities is None


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"request_hash": "ab" * 32},
        # words that name non-finite numbers, and text json.dumps and pydantic write differently
        {
            "features": [{"NaN": 'Infinity é 漢字 😀 \u2028 \t \\ "'}],
            "predictions": ["NaN"],
            "probabilities": [None],
            "cached": [False],
        },
        {"predictions": [None, False]},
    ],
)
def test_served_rows_encode_to_the_entry_of_their_records(changes: dict[str, Any]) -> None:
    groups = [
        served(**changes),
        served(request_id="req-10", served_at=datetime(2030, 1, 1, tzinfo=UTC)),
    ]
    records = [record for group in groups for record in group.records()]
    assert encode_served(groups) == encode_entry(records)
    assert decode_entry(encode_served(groups)) == records


def test_served_rows_that_break_the_contract_are_refused_not_written() -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_served([served(probabilities=[{"setosa": float("nan")}, None])])
    with pytest.raises(ValidationError):
        encode_served([served(predictions=[("a", "tuple"), 1])])
