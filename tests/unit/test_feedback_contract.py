"""What an actual may be for a model, the feedback stream contract, and the bulk grammar."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from berth_api.errors import MalformedRequest, UnsupportedMediaType
from berth_api.protocols.feedback import parse_bulk
from berth_common.feedback import (
    ActualRefused,
    OutcomeSpec,
    infer_spec,
    normalize_actual,
    same_actual,
)
from berth_common.ledger import (
    FeedbackRecord,
    MalformedEntry,
    decode_entry,
    decode_feedback_entry,
    encode_entry,
    encode_feedback_entry,
    is_feedback_entry,
)
from tests.factories import make_record

TEXT = OutcomeSpec("classification", ("setosa", "versicolor"))
INTS = OutcomeSpec("classification", (0, 1))
DIGITS = OutcomeSpec("classification", ("0", "1"))
BOOLS = OutcomeSpec("classification", (False, True))
BOTH = OutcomeSpec("classification", (1, "1"))
REGRESSOR = OutcomeSpec("regression")


@pytest.mark.parametrize(
    ("spec", "given", "kept"),
    [
        (TEXT, "setosa", "setosa"),
        (INTS, 1, 1),
        (INTS, "1", 1),
        (INTS, " 0 ", 0),
        (INTS, 1.0, 1),
        (DIGITS, 1, "1"),
        (DIGITS, "1", "1"),
        (BOOLS, True, True),
        (BOOLS, "true", True),
        (BOOLS, "False", False),
        (BOTH, 1, 1),
        (BOTH, "1", "1"),
        (REGRESSOR, 2, 2),
        (REGRESSOR, 2.5, 2.5),
        (REGRESSOR, "2.5", 2.5),
        (REGRESSOR, "-3", -3),
        # classes unknown: the kind of answer the model gave
        (OutcomeSpec("classification", None, "setosa"), "anything", "anything"),
        (OutcomeSpec("classification", None, 3), "4", 4),
        (OutcomeSpec("classification", None, True), "false", False),
    ],
)
def test_an_actual_is_kept_as_the_model_types_its_answers(
    spec: OutcomeSpec, given: Any, kept: Any
) -> None:
    result = normalize_actual(given, spec)
    assert result == kept
    assert type(result) is type(kept)


@pytest.mark.parametrize(
    ("spec", "given", "reason"),
    [
        (TEXT, "tulip", r"not one of the model.s classes \(setosa, versicolor\)"),
        (TEXT, 1, "not one of"),
        (INTS, True, "not one of"),  # a boolean is never a number
        (INTS, "1.5", "not one of"),
        (BOOLS, 1, "not one of"),
        (OutcomeSpec("classification", ("1", "1.0")), 1, "several"),
        (REGRESSOR, True, "finite number"),
        (REGRESSOR, "ten", "finite number"),
        (REGRESSOR, float("inf"), "finite number"),
        (REGRESSOR, "nan", "finite number"),
        (REGRESSOR, 10**400, "finite number"),
        (REGRESSOR, None, "single label"),
        (TEXT, ["setosa"], "single label"),
        (TEXT, "a\x00b", "NUL"),
        (OutcomeSpec("classification", None, "setosa"), 7, "text labels"),
    ],
)
def test_an_actual_the_model_cannot_answer_is_refused(
    spec: OutcomeSpec, given: Any, reason: str
) -> None:
    with pytest.raises(ActualRefused, match=reason):
        normalize_actual(given, spec)


def test_many_classes_are_named_up_to_ten() -> None:
    spec = OutcomeSpec("classification", tuple(f"c{i}" for i in range(25)))
    with pytest.raises(ActualRefused, match=r"c9 and 15 more\)"):
        normalize_actual("x", spec)


def test_the_task_of_a_version_without_a_model_versions_row_is_inferred() -> None:
    assert infer_spec("regression", None, "x", True).task == "regression"
    assert infer_spec("classification", ["a"], 1, False) == OutcomeSpec("classification", ("a",), 1)
    assert infer_spec(None, None, 3.5, False).task == "regression"
    assert infer_spec(None, None, 1, True).task == "classification"
    assert infer_spec(None, None, "a", False).task == "classification"


def test_same_actual_compares_as_jsonb_does() -> None:
    assert same_actual(1, 1.0)
    assert not same_actual(True, 1)
    assert not same_actual("1", 1)


def feedback_record(**changes: Any) -> FeedbackRecord:
    values: dict[str, Any] = {
        "feedback_id": "f-1",
        "request_id": "req-1",
        "row_index": 0,
        "actual": True,
        "received_at": datetime(2026, 12, 1, 9, 30, tzinfo=UTC),
        "source": "api",
    }
    return FeedbackRecord(**{**values, **changes})


def test_feedback_entries_round_trip_and_are_told_apart_from_predictions() -> None:
    records = [
        feedback_record(),
        feedback_record(feedback_id="f-2", actual=1),
        feedback_record(feedback_id="f-3", actual=1.5),
        feedback_record(feedback_id="f-4", actual="1"),
    ]
    fields = encode_feedback_entry(records)
    assert is_feedback_entry(fields)
    assert is_feedback_entry({k.encode(): v.encode() for k, v in fields.items()})
    assert not is_feedback_entry(encode_entry([make_record()]))
    decoded = decode_feedback_entry({k.encode(): v.encode() for k, v in fields.items()})
    assert decoded == records
    assert [type(r.actual) for r in decoded] == [bool, int, float, str]
    # a worker that knows only predictions refuses it, loudly
    with pytest.raises(MalformedEntry, match="unknown entry format 'f1'"):
        decode_entry(fields)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"v": "f1"}, "no 'feedback' field"),
        ({"v": "f1", "feedback": "[]"}, "non-empty"),
        ({"v": "f1", "feedback": "{"}, "not valid JSON"),
        ({"v": "f1", "feedback": '[{"feedback_id": "x"}]'}, "invalid feedback row"),
        ({"v": "f1", "feedback": '[{"actual": NaN}]'}, "not valid JSON"),
        ({"v": "f2", "feedback": "[]"}, "unknown entry format .f2., expected one of \\[.f1.\\]"),
    ],
)
def test_broken_feedback_entries_say_why(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(MalformedEntry, match=reason):
        decode_feedback_entry(fields)


def test_bulk_csv_lines_are_read_one_by_one() -> None:
    upload = parse_bulk(
        b"\xef\xbb\xbfActual,request_id,row_index\r\n"
        b'"a,b",r-1,0\r\n'
        b"x,r-1,-1\r\n"
        b",r-2,0\r\n"
        b"y,bad id,0\r\n"
        b"\r\n"
        b"z,r-1,0\r\n",
        "text/csv; charset=utf-8",
        1000,
    )
    assert [(line.line, line.request_id, line.actual) for line in upload.lines] == [
        (2, "r-1", "a,b")
    ]
    assert [(p.line, p.field) for p in upload.problems] == [
        (3, "row_index"),
        (4, "actual"),
        (5, "request_id"),
        (7, "row_index"),
    ]
    assert upload.read == 5


def test_bulk_json_lines_keep_their_types() -> None:
    upload = parse_bulk(
        b'{"request_id": "r-1", "row_index": 0, "actual": 1}\n'
        b'{"request_id": "r-1", "row_index": 1, "actual": "1"}\n'
        b'{"request_id": "r-1", "row_index": true, "actual": 1}\n'
        b'{"request_id": "r-1", "row_index": 2, "actual": "\\u2028"}\n',
        "application/x-ndjson",
        1000,
    )
    assert [line.actual for line in upload.lines] == [1, "1", "\u2028"]
    assert [(p.line, p.field) for p in upload.problems] == [(3, "row_index")]


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"a,b,c\n", "text/csv", MalformedRequest),
        (b"", "text/csv", MalformedRequest),
        (b"\xff", "application/jsonl", MalformedRequest),
        (b"{}", "application/json", UnsupportedMediaType),
    ],
)
def test_bulk_uploads_that_are_not_feedback_at_all(
    body: bytes, content_type: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse_bulk(body, content_type, 1000)
