"""Calls a bundle's model on validated rows and turns numpy output into plain JSON values.

A model fitted on a DataFrame (it has `feature_names_in_`, as every Pipeline with a
ColumnTransformer selecting columns by name does) gets a DataFrame with those columns and the
bundle's types; any other model gets a plain array, which is cheaper.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from berth_api.bundles.bundle import FeatureSpec, FeatureType, Label, ModelBundle
from berth_api.errors import FieldError, UnpredictableInput
from berth_api.serving.features import Value

logger = logging.getLogger(__name__)

_PANDAS_TYPES: dict[FeatureType, str] = {
    "number": "float64",
    "integer": "int64",
    "boolean": "bool",
    "string": "object",
}

# Estimators whose predict() is, by their own definition, the class of highest predict_proba:
# for them one model call gives both label and probabilities, halving the cost of a request.
_PREDICT_IS_ARGMAX_PROBA = frozenset(
    {
        "RandomForestClassifier",
        "ExtraTreesClassifier",
        "DecisionTreeClassifier",
        "ExtraTreeClassifier",
    }
)


@dataclass(frozen=True)
class ModelOutput:
    label: Label
    probabilities: dict[str, float] | None


class Predicts(Protocol):
    """What the data plane needs of a model: rows in, one output per row, blocking."""

    @property
    def engine(self) -> str: ...

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]: ...


class Predictor:
    """The model itself, through scikit-learn: what every bundle can be served with."""

    engine = "scikit-learn"

    @classmethod
    def for_bundle(cls, bundle: ModelBundle) -> Predictor:
        return cls(bundle.model, bundle.metadata.features)

    def __init__(self, model: Any, features: Sequence[FeatureSpec]) -> None:
        self._model = model
        self._numeric = all(f.type in ("number", "integer") for f in features)
        self._columns: list[tuple[str, str]] | None = None
        if hasattr(self._model, "feature_names_in_"):
            self._columns = [(f.name, _PANDAS_TYPES[f.type]) for f in features]
        self._has_proba = hasattr(self._model, "predict_proba") and hasattr(self._model, "classes_")
        final = self._model.steps[-1][1] if hasattr(self._model, "steps") else self._model
        self._label_from_proba = self._has_proba and type(final).__name__ in (
            _PREDICT_IS_ARGMAX_PROBA
        )
        self._class_keys = class_keys(self._model.classes_) if self._has_proba else []

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        """Blocking; the batcher decides whether in the model's thread or on the loop."""
        try:
            matrix = self._matrix(rows)
            # overflow is detected below and answered as a 422; numpy need not warn about it too
            with np.errstate(over="ignore", invalid="ignore"):
                return self._predict(matrix)
        except (ValueError, TypeError, OverflowError) as exc:
            raise refused(len(rows), exc) from exc

    def _matrix(self, rows: list[list[Value]]) -> Any:
        if self._columns is None:
            return np.asarray(rows, dtype=np.float64 if self._numeric else object)
        return pd.DataFrame(
            {
                name: pd.Series([row[i] for row in rows], dtype=dtype)
                for i, (name, dtype) in enumerate(self._columns)
            }
        )

    def _predict(self, matrix: Any) -> list[ModelOutput]:
        if not self._has_proba:
            return regression_outputs(np.asarray(self._model.predict(matrix)))
        proba = self._model.predict_proba(matrix)
        check_finite_rows(proba)
        if self._label_from_proba:
            labels = self._model.classes_.take(np.argmax(proba, axis=1))
        else:
            labels = self._model.predict(matrix)
        return classification_outputs(labels, proba.tolist(), self._class_keys)


def regression_outputs(values: Any) -> list[ModelOutput]:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        _refuse(np.isfinite(values))
    return [ModelOutput(value, None) for value in _plain_values(values)]


def classification_outputs(
    labels: Any, proba_rows: list[list[float]], class_keys: list[str]
) -> list[ModelOutput]:
    return [
        ModelOutput(label, dict(zip(class_keys, row, strict=True)))
        for label, row in zip(_plain_values(labels), proba_rows, strict=True)
    ]


def check_finite_rows(proba: Any) -> None:
    finite = np.isfinite(proba).all(axis=1)
    if not finite.all():
        _refuse(finite)


def refused(rows: int, exc: Exception) -> UnpredictableInput:
    # Valid JSON of the right types that the estimator still refuses, e.g. 1e300 for a tree
    # model that works in float32. Its message can quote the data: log it only.
    logger.warning("model refused a batch of %d rows: %s", rows, exc)
    return UnpredictableInput(
        f"the model could not predict these rows ({type(exc).__name__}); "
        "check the values against the ranges the model was trained on",
        [FieldError("instances", "refused by the model")],
    )


def _refuse(finite_rows: Any) -> None:
    bad = [int(i) for i in np.flatnonzero(~finite_rows)[:10]]
    raise UnpredictableInput(
        f"the model produced NaN or infinity for row(s) {bad} of the rows it was given",
        [FieldError("instances", "model output is not a finite number")],
    )


def class_keys(classes: Any) -> list[str]:
    """The keys of `probabilities`: each class as a string, in the model's class order."""
    return [str(_plain(c)) for c in classes]


def _plain_values(values: Any) -> list[Label]:
    """An array's values as Python's own: tolist() converts a whole numeric or text array in
    one call, where an item() per row cost a 100-row call a tenth of its time."""
    array = np.asarray(values)
    if array.dtype.kind == "O" or array.ndim != 1:  # as before: item() by item()
        return [_plain(value) for value in array]
    return array.tolist()  # type: ignore[no-any-return]


def _plain(value: Any) -> Label:
    item = value.item() if hasattr(value, "item") else value
    return item  # type: ignore[no-any-return]
