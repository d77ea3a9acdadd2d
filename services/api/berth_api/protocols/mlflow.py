"""MLflow's scoring protocol, which SageMaker also speaks: `POST /invocations`, `GET /ping`.

JSON bodies hold exactly one of `dataframe_split`, `dataframe_records`, `instances` or `inputs`
(plus optional `params`, which a scikit-learn model has no use for); CSV bodies have a header row
of feature names. The answer is `{"predictions": [...]}`, one label (or value) per row.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from berth_api.bundles.bundle import BundleMetadata
from berth_api.errors import (
    ErrorStyle,
    FieldError,
    InvalidInput,
    MalformedRequest,
    UnsupportedMediaType,
)
from berth_api.protocols.door import DoorRequest, Limits, Parsed, rows_from_columns
from berth_api.protocols.json_body import is_json, load_json
from berth_api.serving.answer import Answer

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class MlflowDoor:
    style = ErrorStyle.MLFLOW

    def parse(self, request: DoorRequest, metadata: BundleMetadata, limits: Limits) -> Parsed:
        return Parsed(instances_from_body(metadata, request.body, request.content_type))

    def render(self, answer: Answer, parsed: Parsed) -> bytes:
        return orjson.dumps({"predictions": [row.label for row in answer.predictions]})


def instances_from_body(metadata: BundleMetadata, body: bytes, content_type: str) -> list[Any]:
    media = content_type.split(";")[0].strip().lower()
    if media == "text/csv":
        return _from_csv(metadata, body)
    if is_json(media):
        return _from_json(load_json(body))
    raise UnsupportedMediaType(
        f"content type {media[:100]!r} is not supported; send application/json or text/csv"
    )


def _from_json(document: Any) -> list[Any]:
    if not isinstance(document, dict):
        raise InvalidInput(
            f"the body must be a JSON object with one of {', '.join(FORMATS)}",
            [FieldError("body", "not an object")],
        )
    present = [key for key in FORMATS if key in document]
    unknown = sorted(set(document) - set(FORMATS) - {"params"})
    if len(present) != 1 or unknown:
        raise InvalidInput(
            f"the body must hold exactly one of {', '.join(FORMATS)} (and optionally params); "
            f"found {', '.join(repr(k[:64]) for k in (present + unknown)[:10]) or 'none of them'}",
            [FieldError("body", "exactly one input format")],
        )
    key = present[0]
    value = document[key]
    if key == "dataframe_split":
        return _from_split(value)
    if key == "inputs" and isinstance(value, dict):
        return rows_from_columns(value, key)
    if not isinstance(value, list):
        raise InvalidInput(f"{key} must be a list of rows", [FieldError(key, "not a list")])
    return value


def _from_split(value: Any) -> list[Any]:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise InvalidInput(
            "dataframe_split must be an object with 'data' (and usually 'columns')",
            [FieldError("dataframe_split.data", "required list of rows")],
        )
    columns = value.get("columns")
    data = value["data"]
    if columns is None:
        return list(data)
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput(
            "dataframe_split.columns must be a list of feature names",
            [FieldError("dataframe_split.columns", "not a list of strings")],
        )
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidInput(
                f"dataframe_split.data[{i}] must hold one value per column ({len(columns)})",
                [FieldError(f"dataframe_split.data[{i}]", f"expected {len(columns)} values")],
            )
        rows.append(dict(zip(columns, row, strict=True)))
    return rows


def _from_csv(metadata: BundleMetadata, body: bytes) -> list[Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedRequest("the CSV body is not UTF-8") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput("the CSV body is empty", [FieldError("body", "no header row")]) from None
    except csv.Error as exc:
        raise MalformedRequest(f"the CSV body cannot be parsed: {exc}") from exc
    types = {f.name: f.type for f in metadata.features}
    rows: list[Any] = []
    try:
        for line, record in enumerate(reader, start=2):
            if not record:
                continue
            if len(record) != len(header):
                raise InvalidInput(
                    f"CSV line {line} has {len(record)} fields, the header has {len(header)}",
                    [FieldError(f"line {line}", "wrong number of fields")],
                )
            rows.append(
                {
                    name: _csv_value(raw, types.get(name), name, line)
                    for name, raw in zip(header, record, strict=True)
                }
            )
    except csv.Error as exc:
        raise MalformedRequest(f"the CSV body cannot be parsed: {exc}") from exc
    return rows


def _csv_value(raw: str, kind: str | None, name: str, line: int) -> Any:
    """CSV is all text: read each cell as its feature's type; the row check does the rest."""
    value = raw.strip()
    try:
        if kind == "number":
            return float(value)
        if kind == "integer":
            return int(value)
    except ValueError:
        raise InvalidInput(
            f"CSV line {line}: {name} must be a {kind}",
            [FieldError(f"line {line}.{name}", f"not a {kind}")],
        ) from None
    if kind == "boolean":
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise InvalidInput(
            f"CSV line {line}: {name} must be true or false",
            [FieldError(f"line {line}.{name}", "not a boolean")],
        )
    return raw
