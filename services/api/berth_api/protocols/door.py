"""What every protocol's door does: read a request body into rows, write an answer back.

The HTTP layer does the same for every door: find the model, let the door parse the body, call
`PredictionService`, let the door render the answer. A door checks everything a client can get
wrong in its protocol (media type, shapes, requested outputs) in `parse`, before the service runs,
so that nothing is predicted, cached or recorded for a request that is not answered 200.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from berth_api.bundles.bundle import BundleMetadata
from berth_api.errors import ErrorStyle, FieldError, InvalidInput
from berth_api.serving.answer import Answer


@dataclass(frozen=True, slots=True)
class DoorRequest:
    body: bytes
    content_type: str
    # Triton's binary tensor extension: the length of the JSON part, when the client sent one.
    inference_header_length: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Checked by a door wherever its protocol could describe more rows than it sends."""

    max_rows: int


@dataclass(frozen=True, slots=True)
class Parsed:
    """The rows for the service, and whatever the door needs again to render the answer."""

    instances: Sequence[Any]
    context: Any = None


class Door(Protocol):
    style: ErrorStyle

    def parse(self, request: DoorRequest, metadata: BundleMetadata, limits: Limits) -> Parsed: ...

    def render(self, answer: Answer, parsed: Parsed) -> bytes: ...


def rows_from_columns(columns: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Rows from the columnar form several protocols allow: feature name -> a value per row."""
    if not columns or not all(isinstance(column, list) for column in columns.values()):
        raise InvalidInput(
            f"{where} as an object maps each feature to a list of values, one per row",
            [FieldError(where, "columns must be lists")],
        )
    lengths = {len(column) for column in columns.values()}
    if len(lengths) != 1:
        raise InvalidInput(
            f"every column of {where} must hold the same number of values",
            [FieldError(where, "columns of different lengths")],
        )
    (count,) = lengths
    return [{name: column[r] for name, column in columns.items()} for r in range(count)]
