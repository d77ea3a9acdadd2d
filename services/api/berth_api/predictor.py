"""Calls a bundle's model on validated rows and turns numpy output into plain JSON values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from berth_api.bundles import Label, ModelBundle
from berth_api.features import Value

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
        self._numeric = all(f.type in ("number", "integer") for f in bundle.metadata.features)
        self._has_proba = hasattr(self._model, "predict_proba") and hasattr(self._model, "classes_")
        final = self._model.steps[-1][1] if hasattr(self._model, "steps") else self._model
        self._label_from_proba = self._has_proba and type(final).__name__ in (
            _PREDICT_IS_ARGMAX_PROBA
        )
        self._class_keys = [str(_plain(c)) for c in self._model.classes_] if self._has_proba else []

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        """Blocking: run it in a thread, never on the event loop."""
        matrix = np.asarray(rows, dtype=np.float64 if self._numeric else object)
        if not self._has_proba:
            return [ModelOutput(_plain(label), None) for label in self._model.predict(matrix)]
        proba = self._model.predict_proba(matrix)
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


def _plain(value: Any) -> Label:
    item = value.item() if hasattr(value, "item") else value
    return item  # type: ignore[no-any-return]
