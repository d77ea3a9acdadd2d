"""What `PredictionService` answers: plain values, written out by orjson.

`schemas.PredictResponse` documents this answer (it is what `/docs` shows for the REST
endpoints) and still reads an answer back from Redis for a retried request. On the hot path it
cost a one-row prediction about 4 us to validate values that the service has already checked
and another to write them, some 3.5 % of the API's CPU per request under load; these
dataclasses are written by orjson directly, in their fields' order, which is the schema's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from berth_api.bundles.bundle import Label
from berth_api.schemas import PredictResponse
from berth_api.serving.predictor import ModelOutput

# Exactly these types, not subclasses: what orjson writes as the schema's Label says.
_LABEL_TYPES = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class AnsweredBy:
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class RowAnswer:
    label: Label
    probabilities: dict[str, float] | None
    cached: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """A request's answer; `json()` is the REST body, `PredictResponse` in the OpenAPI document."""

    request_id: str
    model: AnsweredBy
    predictions: list[RowAnswer]

    def json(self) -> bytes:
        try:
            return orjson.dumps(self)
        except orjson.JSONEncodeError:  # an integer beyond 64 bits, which pydantic writes
            return self.response().model_dump_json().encode()

    def response(self) -> PredictResponse:
        return PredictResponse.model_validate(
            {
                "request_id": self.request_id,
                "model": {"name": self.model.name, "version": self.model.version},
                "predictions": [
                    {"label": p.label, "probabilities": p.probabilities, "cached": p.cached}
                    for p in self.predictions
                ],
            }
        )

    @classmethod
    def of(
        cls,
        request_id: str,
        name: str,
        version: str,
        outputs: Sequence[ModelOutput],
        cached: Sequence[bool],
    ) -> Answer:
        """The answer to rows the model (or the cache) answered.

        A label of a type the schema does not name exactly (only an unusual regressor's object
        array could give one) goes through `PredictResponse`, which converts it (a numpy or
        Decimal number to a float) or raises, as it did when every answer went through it.
        """
        rows = [
            RowAnswer(output.label, output.probabilities, hit)
            for output, hit in zip(outputs, cached, strict=True)
        ]
        answer = cls(request_id, AnsweredBy(name, version), rows)
        if all(type(row.label) in _LABEL_TYPES for row in rows):
            return answer
        return cls.from_response(answer.response())

    @classmethod
    def from_json(cls, payload: str | bytes) -> Answer:
        """An answer written by `json()` (kept in Redis for a retry), checked against the schema:
        it comes back from outside the process."""
        return cls.from_response(PredictResponse.model_validate_json(payload))

    @classmethod
    def from_response(cls, response: PredictResponse) -> Answer:
        return cls(
            response.request_id,
            AnsweredBy(response.model.name, response.model.version),
            [RowAnswer(p.label, p.probabilities, p.cached) for p in response.predictions],
        )
