"""Feedback bodies: one request's actuals (JSON), and bulk uploads (CSV or JSON lines).

One request's feedback is `{"actuals": [v0, v1, ...]}` (one per row, in row order) or
`{"rows": [{"row_index": 1, "actual": v}, ...]}`. A bulk upload is CSV with the header
`request_id,row_index,actual` (in any order), or one JSON object with those three members per
line. Here only the grammar is checked: whether an actual suits the model that served the row is
the data plane's question (`ledger/feedback.py`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from berth_api.errors import FieldError, MalformedRequest, UnsupportedMediaType
from berth_api.http.middleware import REQUEST_ID_PATTERN
from berth_api.protocols.json_body import load_json
from berth_api.schemas import ModelRef
from berth_common.feedback import Actual

CSV_TYPES = frozenset({"text/csv"})
JSON_LINES_TYPES = frozenset(
    {"application/x-ndjson", "application/jsonl", "application/json-lines"}
)
BULK_COLUMNS = ("request_id", "row_index", "actual")
# Problems listed line by line in a bulk answer, at most; the count covers them all.
MAX_LISTED_PROBLEMS = 100


def check_actual(value: Any) -> Actual:
    """A label (text, number or boolean) as JSON can carry it to the ledger; which labels the
    model could have answered is checked later, against the model."""
    if value is None or isinstance(value, list | dict):
        raise ValueError("an actual is a label or a number, not null, a list or an object")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("an actual must be a finite number")
    if isinstance(value, str):
        check_text(value)
    if not isinstance(value, str | int | float | bool):
        raise ValueError("an actual is a label or a number")
    return value


def check_text(text: str) -> None:
    if "\x00" in text:
        raise ValueError("text must not hold a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be Unicode (it holds a lone UTF-16 surrogate)") from None


ActualValue = Annotated[
    Any,
    AfterValidator(check_actual),
    Field(description="The row's true outcome: a class label, or a number for a regressor."),
]


class FeedbackRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    row_index: int = Field(ge=0, strict=True, description="The row's position in the request.")
    actual: ActualValue


class FeedbackBody(BaseModel):
    """The true outcomes of a served request's rows: all of them in row order (`actuals`), or
    some of them by row index (`rows`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"actuals": ["setosa"]},
                {"rows": [{"row_index": 0, "actual": "versicolor"}]},
            ]
        },
    )

    actuals: list[ActualValue] | None = Field(
        default=None, min_length=1, description="One actual per row of the request, in order."
    )
    rows: list[FeedbackRow] | None = Field(
        default=None, min_length=1, description="Actuals of some rows, by row index."
    )

    @model_validator(mode="after")
    def _one_form(self) -> FeedbackBody:
        if (self.actuals is None) == (self.rows is None):
            raise ValueError("send either 'actuals' (one per row, in order) or 'rows', not both")
        if self.rows is not None:
            seen: set[int] = set()
            for row in self.rows:
                if row.row_index in seen:
                    raise ValueError(f"row_index {row.row_index} is given more than once")
                seen.add(row.row_index)
        return self

    def by_row(self) -> list[tuple[int, Actual]]:
        if self.actuals is not None:
            return list(enumerate(self.actuals))
        return [(row.row_index, row.actual) for row in self.rows or ()]


class AcceptedRow(BaseModel):
    row_index: int
    actual: Actual = Field(description="As stored: typed as the model's classes are.")
    feedback_id: str = Field(description="The ledger's id of this row of feedback.")


class FeedbackAccepted(BaseModel):
    """What was accepted. `validated` is false when the prediction was not stored yet (it may
    still be on its way): the worker then checks the rows when it stores them, and keeps those it
    cannot store in ledger_dead_letters with the reason."""

    request_id: str
    validated: bool
    model: ModelRef | None = Field(description="The model version that served the request.")
    rows: list[AcceptedRow]


class LineProblem(BaseModel):
    line: int = Field(description="Line number in the upload (the CSV header is line 1).")
    field: str
    message: str


class BulkFeedbackAccepted(BaseModel):
    lines: int = Field(description="Lines with feedback read (blank lines and header left out).")
    accepted: int
    unvalidated: int = Field(
        description="Accepted lines whose prediction was not stored yet: checked by the worker."
    )
    rejected: int
    problems: list[LineProblem] = Field(
        description=f"Why lines were rejected (the first {MAX_LISTED_PROBLEMS})."
    )


@dataclass(frozen=True, slots=True)
class BulkLine:
    line: int
    request_id: str
    row_index: int
    actual: Actual


@dataclass(frozen=True, slots=True)
class BulkProblem:
    line: int
    field: str
    message: str

    def field_error(self) -> FieldError:
        return FieldError(f"line {self.line}: {self.field}", self.message)


@dataclass(frozen=True, slots=True)
class BulkUpload:
    lines: list[BulkLine]
    problems: list[BulkProblem]

    @property
    def read(self) -> int:
        return len(self.lines) + len(self.problems)


def parse_bulk(body: bytes, content_type: str, max_string_length: int) -> BulkUpload:
    """Lines of a bulk upload; a line that cannot be read is a problem of its own, not a
    refusal of the others. MalformedRequest only for a body that is no CSV or text at all."""
    media = content_type.partition(";")[0].strip().lower()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedRequest("the upload is not UTF-8 text") from None
    if media in CSV_TYPES:
        lines, problems = _csv_lines(text)
    elif media in JSON_LINES_TYPES:
        lines, problems = _json_lines(text)
    else:
        raise UnsupportedMediaType(
            f"content type {media[:100]!r} is not supported here; send text/csv (header "
            "request_id,row_index,actual) or application/x-ndjson (one JSON object per line)"
        )
    return _distinct(_checked(lines, problems, max_string_length))


def _csv_lines(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[BulkProblem]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise MalformedRequest("the upload is empty; send a header and a line per row") from None
    except csv.Error as exc:
        raise MalformedRequest(f"the upload is not CSV: {exc}") from None
    names = [name.strip().lower() for name in header]
    if sorted(names) != sorted(BULK_COLUMNS):
        raise MalformedRequest(
            "the CSV header must name the columns request_id, row_index and actual"
        )
    lines: list[tuple[int, dict[str, Any]]] = []
    problems: list[BulkProblem] = []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(BulkProblem(reader.line_num, "line", f"not CSV: {exc}"))
            continue
        if not any(value.strip() for value in values):
            continue
        if len(values) != len(names):
            problems.append(
                BulkProblem(
                    reader.line_num, "line", f"expected {len(names)} values, got {len(values)}"
                )
            )
            continue
        item: dict[str, Any] = dict(zip(names, values, strict=True))
        item["row_index"] = _csv_row_index(item["row_index"])
        if item["actual"] == "":
            item["actual"] = None
        lines.append((reader.line_num, item))
    return lines, problems


def _csv_row_index(text: str) -> Any:
    stripped = text.strip()
    return int(stripped) if stripped.isascii() and stripped.isdigit() else text


def _json_lines(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[BulkProblem]]:
    lines: list[tuple[int, dict[str, Any]]] = []
    problems: list[BulkProblem] = []
    # split on newlines only: a JSON string may hold other line separators (U+2028) as they are
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            item = load_json(raw.encode("utf-8"))
        except MalformedRequest as exc:
            problems.append(BulkProblem(number, "line", exc.detail))
            continue
        if not isinstance(item, dict):
            problems.append(BulkProblem(number, "line", "each line must be a JSON object"))
            continue
        unknown = sorted(set(item) - set(BULK_COLUMNS))
        if unknown:
            problems.append(
                BulkProblem(
                    number, "line", "unknown members; each line has request_id, row_index, actual"
                )
            )
            continue
        lines.append((number, item))
    return lines, problems


def _checked(
    items: list[tuple[int, dict[str, Any]]], problems: list[BulkProblem], max_string_length: int
) -> BulkUpload:
    lines: list[BulkLine] = []
    for number, item in items:
        request_id = item.get("request_id")
        row_index = item.get("row_index")
        if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.match(request_id):
            problems.append(BulkProblem(number, "request_id", "not a request id"))
            continue
        if isinstance(row_index, bool) or not isinstance(row_index, int) or row_index < 0:
            problems.append(BulkProblem(number, "row_index", "must be an integer >= 0"))
            continue
        try:
            actual = check_actual(item.get("actual"))
        except ValueError as exc:
            problems.append(BulkProblem(number, "actual", str(exc)))
            continue
        if isinstance(actual, str) and len(actual) > max_string_length:
            problems.append(
                BulkProblem(number, "actual", f"longer than {max_string_length} characters")
            )
            continue
        lines.append(BulkLine(number, request_id, row_index, actual))
    return BulkUpload(lines, problems)


def _distinct(upload: BulkUpload) -> BulkUpload:
    """A row given twice in one upload is ambiguous (or a mistake): its later lines are refused."""
    first: dict[tuple[str, int], int] = {}
    lines: list[BulkLine] = []
    problems = list(upload.problems)
    for line in upload.lines:
        key = (line.request_id, line.row_index)
        if key in first:
            problems.append(
                BulkProblem(
                    line.line, "row_index", f"this row is already given on line {first[key]}"
                )
            )
            continue
        first[key] = line.line
        lines.append(line)
    problems.sort(key=lambda problem: problem.line)
    return BulkUpload(lines, problems)
