"""Calls a bundle's model on validated rows and turns numpy output into plain JSON values.

A model fitted on a DataFrame (it has `feature_names_in_`, as every Pipeline with a
ColumnTransformer selecting columns by name does) gets a DataFrame with those columns and the
bundle's types; any other model gets a plain array, which is cheaper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from berth_api.bundles import FeatureType, Label, ModelBundle
from berth_api.errors import FieldError, UnpredictableInput
from berth_api.features import Value

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


class Predictor:
    def __init__(self, bundle: ModelBundle) -> None:
        self._model = bundle.model
        features = bundle.metadata.features
        self._numeric = all(f.type in ("number", "integer") for f in features)
        self._columns: list[tuple[str, str]] | None = None
        if hasattr(self._model, "feature_names_in_"):
            self._columns = [(f.name, _PANDAS_TYPES[f.type]) for f in features]
        self._has_proba = hasattr(self._model, "predict_proba") and hasattr(self._model, "classes_")
        final = self._model.steps[-1][1] if hasattr(self._model, "steps") else self._model
        self._label_from_proba = self._has_proba and type(final).__name__ in (
            _PREDICT_IS_ARGMAX_PROBA
        )
        self._class_keys = [str(_plain(c)) for c in self._model.classes_] if self._has_proba else []

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        """Blocking: run it in a thread, never on the event loop."""
        try:
            matrix = self._matrix(rows)
            # overflow is detected below and answered as a 422; numpy need not warn about it too
            with np.errstate(over="ignore", invalid="ignore"):
                return self._predict(matrix)
        except (ValueError, TypeError, OverflowError) as exc:
            # Valid JSON of the right types that the estimator still refuses, e.g. 1e300 for a
            # tree model that works in float32. Its message can quote the data: log it only.
            logger.warning("model refused a batch of %d rows: %s", len(rows), exc)
            raise UnpredictableInput(
                f"the model could not predict these rows ({type(exc).__name__}); "
                "check the values against the ranges the model was trained on",
                [FieldError("instances", "refused by the model")],
            ) from exc

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
            labels = np.asarray(self._model.predict(matrix))
            if labels.dtype.kind == "f" and not np.isfinite(labels).all():
                _refuse(np.isfinite(labels))
            return [ModelOutput(_plain(label), None) for label in labels]
        proba = self._model.predict_proba(matrix)
        finite = np.isfinite(proba).all(axis=1)
        if not finite.all():
            _refuse(finite)
        if self._label_from_proba:
            labels = self._model.classes_.take(np.argmax(proba, axis=1))
        else:
            labels = self._model.predict(matrix)
        return [
            ModelOutput(
                _plain(label),
                {key: float(p) for key, p in zip(self._class_keys, row, strict=True)},
            )
            for label, row in zip(labels, proba.tolist(), strict=True)
        ]


def _refuse(finite_rows: Any) -> None:
    bad = [int(i) for i in np.flatnonzero(~finite_rows)[:10]]
    raise UnpredictableInput(
        f"the model produced NaN or infinity for row(s) {bad} of the rows it was given",
        [FieldError("instances", "model output is not a finite number")],
    )


def _plain(value: Any) -> Label:
    item = value.item() if hasattr(value, "item") else value
    return item  # type: ignore[no-any-return]
