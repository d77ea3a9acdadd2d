"""The training reference of a bundle: what its features and answers looked like in training.

The drift views (`feature_drift`, `prediction_drift`, migration 0004) compare each day's served
rows with it, bin by bin, as a population stability index. It is computed once, when a bundle
is trained or packaged, from the reference rows (the training data, or the sample given to
`package`), kept in metadata.json and loaded into the database by the API (`reference_bins`).

- A numeric feature (number, integer) gets decile bins: the distinct 10%..90% quantiles of its
  reference values are the edges of [-inf, e1), [e1, e2), ..., [ek, +inf), and each bin's
  expected share is counted, not assumed to be a tenth: ties (iris' petal widths, integer
  features) make some bins wider and others disappear.
- A string or boolean feature gets a bin per category seen, with its share, then an
  "anything else" bin (expected 0) for the values served that training never held.
- The answers: a classifier's classes (every class, typed as the model's own, then "anything
  else"); a regressor's values in decile bins. They come from the training labels (or targets)
  when known, otherwise from the model's own predictions on the reference rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from berth_api.bundles.bundle import (
    BundleError,
    DistributionSpec,
    FeatureSpec,
    Label,
    PredictionDistributionSpec,
    ReferenceBinSpec,
    ReferenceSpec,
)
from berth_api.serving.features import Value
from berth_api.serving.predictor import Predictor

# 0.1, ..., 0.9, each the double nearest to its decimal (np.linspace would give 0.30000000000000004)
DECILES = np.arange(1, 10) / 10
# A feature with more categories than this (an id, a free-text field) keeps its most frequent
# ones; the others share "anything else", so that metadata.json and reference_bins stay small.
MAX_CATEGORIES = 100


def numeric_distribution(values: Sequence[float]) -> DistributionSpec:
    """Decile bins of `values`: a value v is in the bin with lower <= v < upper."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0 or not np.isfinite(data).all():
        raise BundleError("a numeric reference needs at least one value, all of them finite")
    edges = np.unique(np.quantile(data, DECILES))
    # bin i holds edges[i-1] <= v < edges[i]: what searchsorted(side="right") counts
    counts = np.bincount(np.searchsorted(edges, data, side="right"), minlength=edges.size + 1)
    bounds = [None, *edges.tolist(), None]
    return DistributionSpec(
        kind="numeric",
        bins=[
            ReferenceBinSpec(lower=bounds[i], upper=bounds[i + 1], expected=count / data.size)
            for i, count in enumerate(counts.tolist())
        ],
    )


def categorical_distribution(
    values: Sequence[Label], categories: Sequence[Label] | None = None
) -> DistributionSpec:
    """A bin per category (those given, in their order, or else the values seen, sorted: the
    MAX_CATEGORIES most frequent), then "anything else", with the share of values that are none
    of them (0 when every value seen has its bin)."""
    if not values:
        raise BundleError("a categorical reference needs at least one value")
    # keyed by type too: True == 1 in Python, but a boolean is not the number 1 in JSON
    counts = Counter((type(value), value) for value in values)
    if categories is None:
        kept = [key for key, _ in counts.most_common(MAX_CATEGORIES)]
        categories = [value for _, value in sorted(kept, key=lambda k: (k[0].__name__, k[1]))]
    shares = [counts.get((type(c), c), 0) / len(values) for c in categories]
    listed = sum(counts.get(key, 0) for key in {(type(c), c) for c in categories})
    return DistributionSpec(
        kind="categorical",
        bins=[
            *(
                ReferenceBinSpec(category=c, expected=share)
                for c, share in zip(categories, shares, strict=True)
            ),
            ReferenceBinSpec(expected=(len(values) - listed) / len(values)),
        ],
    )


def feature_distribution(feature: FeatureSpec, values: Sequence[Value]) -> DistributionSpec:
    if feature.type in ("number", "integer"):
        return numeric_distribution([float(value) for value in values])
    return categorical_distribution(list(values))


def compute_reference(
    features: Sequence[FeatureSpec],
    rows: Sequence[Sequence[Value]],
    answers: Sequence[Label],
    *,
    classes: Sequence[Label] | None,
    source: Literal["labels", "predictions"],
) -> ReferenceSpec:
    """The reference of validated `rows` (in feature order) and their `answers`: labels or
    values, one per row."""
    if not rows or len(answers) != len(rows):
        raise BundleError(
            f"a reference needs rows and one answer per row ({len(rows)} rows, "
            f"{len(answers)} answers)"
        )
    columns = list(zip(*rows, strict=True))
    answer_bins = (
        categorical_distribution(list(answers), classes)
        if classes is not None
        else numeric_distribution([float(answer) for answer in answers])
    )
    return ReferenceSpec(
        rows=len(rows),
        features={
            feature.name: feature_distribution(feature, column)
            for feature, column in zip(features, columns, strict=True)
        },
        prediction=PredictionDistributionSpec(
            source=source, kind=answer_bins.kind, bins=answer_bins.bins
        ),
    )


def model_classes(model: Any) -> list[Label] | None:
    """A classifier's classes as the bundle's metadata has them (numpy's tolist() gives each
    one's Python value); None for a regressor."""
    classes = getattr(model, "classes_", None)
    return None if classes is None else list(np.asarray(classes).tolist())


def training_reference(
    model: Any,
    features: Sequence[FeatureSpec],
    rows: list[list[Value]],
    labels: Sequence[Label] | None = None,
) -> ReferenceSpec:
    """The reference of a fitted model's reference rows: the answer distribution is that of
    `labels` (typed as the model's classes, or numbers for a regressor) when given, else that of
    the model's own predictions on the rows, through the API's predictor."""
    classes = model_classes(model)
    if labels is not None:
        return compute_reference(features, rows, labels, classes=classes, source="labels")
    answers = [output.label for output in Predictor(model, features).predict(rows)]
    return compute_reference(features, rows, answers, classes=classes, source="predictions")
