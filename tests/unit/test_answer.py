"""The service's answer, written without pydantic: byte for byte what the documented schema
(`PredictResponse`) writes, and read back from Redis through it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from berth_api.schemas import PredictResponse
from berth_api.serving.answer import Answer
from berth_api.serving.predictor import ModelOutput


def _schema_json(answer: Answer) -> bytes:  # written out here, not by Answer.response()
    """What PredictResponse writes of the same values: what the REST body was before."""
    return (
        PredictResponse.model_validate(
            {
                "request_id": answer.request_id,
                "model": {"name": answer.model.name, "version": answer.model.version},
                "predictions": [
                    {"label": p.label, "probabilities": p.probabilities, "cached": p.cached}
                    for p in answer.predictions
                ],
            }
        )
        .model_dump_json()
        .encode()
    )


@pytest.mark.parametrize(
    ("outputs", "cached"),
    [
        ([ModelOutput("setosa", {"setosa": 0.97, "versicolor": 0.03, "virginica": 0.0})], [False]),
        ([ModelOutput(1, {"0": 0.25, "1": 0.75}), ModelOutput(0, {"0": 1.0, "1": 0.0})], [1, 0]),
        ([ModelOutput(12.5, None), ModelOutput(-3e-07, None), ModelOutput(1e300, None)], [0] * 3),
        ([ModelOutput(True, {"False": 0.1, "True": 0.9})], [True]),
        ([ModelOutput("été", {"été": 1.0, "hiver": 0.0})], [False]),
        ([ModelOutput(2**70, None)], [False]),
    ],
)
def test_the_answer_is_written_as_the_schema_writes_it(
    outputs: list[ModelOutput], cached: list[Any]
) -> None:
    answer = Answer.of("req-1", "iris", "1.0", outputs, [bool(c) for c in cached])

    assert answer.json() == _schema_json(answer)
    assert Answer.from_json(answer.json()) == answer


def test_a_label_of_another_type_is_converted_by_the_schema() -> None:
    # numpy's float64 is a float subclass, a Decimal no Label at all: both become floats
    answer = Answer.of("req-1", "m", "1", [ModelOutput(np.float64(1.5), None)], [False])

    assert type(answer.predictions[0].label) is float
    assert answer.json() == b'{"request_id":"req-1","model":{"name":"m","version":"1"},' + (
        b'"predictions":[{"label":1.5,"probabilities":null,"cached":false}]}'
    )
    decimal = Answer.of("req-1", "m", "1", [ModelOutput(Decimal("1.5"), None)], [False])  # type: ignore[arg-type]
    assert decimal == answer
    with pytest.raises(ValidationError):
        Answer.of("req-1", "m", "1", [ModelOutput(None, None)], [False])  # type: ignore[arg-type]


def test_an_answer_read_back_from_redis_is_checked() -> None:
    with pytest.raises(ValidationError):
        Answer.from_json(b'{"request_id":"r","model":{"name":"m"},"predictions":[]}')
