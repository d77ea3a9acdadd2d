"""TensorFlow Serving's REST predict API, which KServe adopted as its V1 protocol.

`POST /v1/models/{name}:predict` (or `/v1/models/{name}/versions/{version}:predict`) with
`{"instances": [...]}`, rows as lists in feature order or objects keyed by feature name, or with
`{"inputs": ...}`: the same rows, or TensorFlow Serving's columnar form, an object mapping each
feature to its list of values. The answer is `{"predictions": [...]}`, one label (or value) per
row; an error carries `{"error": "..."}` where these clients read it.
"""

from __future__ import annotations

from typing import Any

import orjson

from berth_api.bundles.bundle import BundleMetadata
from berth_api.errors import ErrorStyle, FieldError, InvalidInput
from berth_api.protocols.door import DoorRequest, Limits, Parsed, rows_from_columns
from berth_api.protocols.json_body import load_json, require_json
from berth_api.serving.answer import Answer

FORMATS = ("instances", "inputs")
# TensorFlow Serving clients may name a signature; a scikit-learn model has only one.
IGNORED = ("signature_name",)


class KServeV1Door:
    style = ErrorStyle.KSERVE_V1

    def parse(self, request: DoorRequest, metadata: BundleMetadata, limits: Limits) -> Parsed:
        require_json(request.content_type)
        return Parsed(instances_from_document(load_json(request.body)))

    def render(self, answer: Answer, parsed: Parsed) -> bytes:
        return orjson.dumps({"predictions": [row.label for row in answer.predictions]})


def instances_from_document(document: Any) -> list[Any]:
    if not isinstance(document, dict):
        raise InvalidInput(
            "the body must be a JSON object with 'instances' or 'inputs'",
            [FieldError("body", "not an object")],
        )
    present = [key for key in FORMATS if key in document]
    unknown = sorted(set(document) - set(FORMATS) - set(IGNORED))
    if len(present) != 1 or unknown:
        shown = ", ".join(repr(k[:64]) for k in (present + unknown)[:10]) or "neither"
        raise InvalidInput(
            f"the body must hold exactly one of 'instances' or 'inputs'; found {shown}",
            [FieldError("body", "exactly one of instances, inputs")],
        )
    key = present[0]
    value = document[key]
    if key == "inputs" and isinstance(value, dict):
        return rows_from_columns(value, "inputs")
    if not isinstance(value, list):
        raise InvalidInput(f"{key} must be a list of rows", [FieldError(key, "not a list")])
    return value
