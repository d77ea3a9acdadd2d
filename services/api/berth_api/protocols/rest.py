"""Berth's own REST bodies: `{"instances": [rows]}`, and on `/predict` also `{"features": row}`.

The two plain forms are recognised directly (the common case costs one JSON parse); anything else
is validated by the pydantic models that `/docs` shows, whose errors name each offending field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from berth_api.bundles.bundle import BundleMetadata
from berth_api.errors import ErrorStyle, invalid_body
from berth_api.protocols.door import DoorRequest, Limits, Parsed
from berth_api.protocols.json_body import load_json, require_json
from berth_api.schemas import DefaultPredictRequest, PredictRequest
from berth_api.serving.answer import Answer


class RestDoor:
    style = ErrorStyle.PROBLEM

    def __init__(self, *, default_route: bool) -> None:
        # `features` is the tutorial body of the default route only
        self._default_route = default_route
        self._model: type[DefaultPredictRequest | PredictRequest] = (
            DefaultPredictRequest if default_route else PredictRequest
        )

    def parse(self, request: DoorRequest, metadata: BundleMetadata, limits: Limits) -> Parsed:
        require_json(request.content_type)
        document = load_json(request.body)
        instances = plain_instances(document, default_route=self._default_route)
        if instances is None:
            instances = _validated(self._model, document)
        return Parsed(instances)

    def render(self, answer: Answer, parsed: Parsed) -> bytes:
        return answer.json()


def plain_instances(document: Any, *, default_route: bool) -> list[Any] | None:
    """The rows of a body in one of the two plain forms, or None to let validation explain."""
    if not isinstance(document, dict) or len(document) != 1:
        return None
    if "instances" in document:
        rows = document["instances"]
        if isinstance(rows, list) and all(isinstance(row, list | dict) for row in rows):
            return rows
        return None
    if default_route and "features" in document:
        row = document["features"]
        return [row] if isinstance(row, list | dict) else None
    return None


def _validated(model: type[DefaultPredictRequest | PredictRequest], document: Any) -> list[Any]:
    try:
        body: BaseModel = model.model_validate(document)
    except ValidationError as exc:
        raise invalid_body(exc.errors(include_input=False, include_url=False)) from None
    if isinstance(body, DefaultPredictRequest):
        return body.rows()
    assert isinstance(body, PredictRequest)
    return body.instances
