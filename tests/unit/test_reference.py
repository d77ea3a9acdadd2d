"""The training reference: bins and shares checked against numpy, computed apart from Berth."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from berth_api.bundles.bundle import (
    BundleMetadata,
    DistributionSpec,
    FeatureSpec,
    load_bundle,
    read_metadata,
)
from berth_api.bundles.package import PackagingError, main, package
from berth_api.bundles.reference import (
    MAX_CATEGORIES,
    categorical_distribution,
    compute_reference,
    numeric_distribution,
)
from berth_api.bundles.repackage import repackage
from berth_api.bundles.train import IRIS_FEATURES
from tests.models import CHURN_COLUMNS, churn_frame, churn_pipeline, make_legacy, save

DECILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def numpy_bins(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Decile edges and the share of values in each bin, by numpy alone."""
    data = np.asarray(values, dtype=float)
    edges = np.unique(np.quantile(data, DECILES))
    counts, _ = np.histogram(data, bins=np.concatenate([[-np.inf], edges, [np.inf]]))
    return edges.tolist(), (counts / data.size).tolist()


def assert_numeric(distribution: DistributionSpec, values: Sequence[float]) -> None:
    edges, shares = numpy_bins(values)
    assert distribution.kind == "numeric"
    assert [b.lower for b in distribution.bins] == [None, *edges]
    assert [b.upper for b in distribution.bins] == [*edges, None]
    assert [b.category for b in distribution.bins] == [None] * len(shares)
    assert [b.expected for b in distribution.bins] == pytest.approx(shares, abs=1e-15)


def categories(distribution: DistributionSpec) -> list[tuple[Any, float]]:
    return [(b.category, b.expected) for b in distribution.bins]


def test_numeric_bins_are_deciles_with_their_shares_counted() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(10, 2, 997)
    assert_numeric(numeric_distribution(values.tolist()), values.tolist())
    assert len(numeric_distribution(values.tolist()).bins) == 10


def test_ties_make_fewer_bins_with_uneven_shares() -> None:
    # integer-like values, as iris' petal widths or a count feature: quantiles repeat
    values = [0.0] * 60 + [1.0] * 25 + [2.0] * 10 + [7.0] * 5
    distribution = numeric_distribution(values)
    assert_numeric(distribution, values)
    assert len(distribution.bins) < 10
    assert distribution.bins[0].expected == 0.0  # nothing below the lowest edge, 0.0
    assert sum(b.expected for b in distribution.bins) == pytest.approx(1.0)
    constant = numeric_distribution([4.0, 4.0, 4.0])
    assert [(b.lower, b.upper, b.expected) for b in constant.bins] == [
        (None, 4.0, 0.0),
        (4.0, None, 1.0),
    ]


def test_categories_with_their_shares_and_anything_else() -> None:
    distribution = categorical_distribution(["eu", "us", "eu", "apac"])
    assert distribution.kind == "categorical"
    assert categories(distribution) == [("apac", 0.25), ("eu", 0.5), ("us", 0.25), (None, 0.0)]
    booleans = categorical_distribution([True, False, True, True])
    assert categories(booleans) == [(False, 0.25), (True, 0.75), (None, 0.0)]
    assert all(isinstance(b.category, bool) for b in booleans.bins[:2])
    # given categories (a model's classes) keep their order, an absent one has share 0, and a
    # value that is none of them is "anything else"; 1 is not True
    classes = categorical_distribution([1, 1, 2, True], categories=[0, 1, 2])
    assert categories(classes) == [(0, 0.0), (1, 0.5), (2, 0.25), (None, 0.25)]


def test_a_feature_with_very_many_categories_keeps_the_most_frequent() -> None:
    values = [f"user-{i}" for i in range(500)] + ["frequent"] * 500
    distribution = categorical_distribution(values)
    assert len(distribution.bins) == MAX_CATEGORIES + 1
    assert ("frequent", 0.5) in categories(distribution)
    kept = MAX_CATEGORIES - 1  # besides "frequent", that many of the ids, 1/1000 each
    other = distribution.bins[-1]
    assert (other.category, other.expected) == (None, (500 - kept) / 1000)


def test_compute_reference_per_feature_type() -> None:
    features = [
        FeatureSpec(name="spend", type="number"),
        FeatureSpec(name="seats", type="integer"),
        FeatureSpec(name="plan", type="string"),
        FeatureSpec(name="active", type="boolean"),
    ]
    rows: list[list[Any]] = [
        [float(i), i % 4, ["basic", "pro"][i % 2], i % 3 == 0] for i in range(40)
    ]
    reference = compute_reference(
        features, rows, [i % 5 * 1.5 for i in range(40)], classes=None, source="labels"
    )
    assert reference.rows == 40
    assert list(reference.features) == ["spend", "seats", "plan", "active"]
    assert_numeric(reference.features["spend"], [float(i) for i in range(40)])
    assert_numeric(reference.features["seats"], [float(i % 4) for i in range(40)])
    assert categories(reference.features["plan"]) == [("basic", 0.5), ("pro", 0.5), (None, 0.0)]
    assert categories(reference.features["active"]) == [
        (False, 26 / 40),
        (True, 14 / 40),
        (None, 0.0),
    ]
    assert reference.prediction.source == "labels"
    assert_numeric(reference.prediction, [i % 5 * 1.5 for i in range(40)])


def test_demo_reference_is_the_training_split(iris_models_dir: Path) -> None:
    """Independently of train.py: the same split of iris, binned by numpy."""
    data = load_iris()
    labels = np.asarray(data.target_names)[data.target]
    x_train, _, y_train, _ = train_test_split(
        data.data, labels, test_size=0.25, random_state=42, stratify=labels
    )
    reference = read_metadata(iris_models_dir / "iris" / "1").reference
    assert reference is not None
    assert reference.rows == len(x_train) == 112
    assert list(reference.features) == IRIS_FEATURES
    for i, name in enumerate(IRIS_FEATURES):
        assert_numeric(reference.features[name], x_train[:, i].tolist())
    assert reference.prediction.source == "labels"
    shares = [float(np.mean(y_train == c)) for c in data.target_names]
    assert categories(reference.prediction) == [
        *zip(data.target_names.tolist(), shares, strict=True),
        (None, 0.0),
    ]


def test_metadata_without_a_reference_still_validates(iris_models_dir: Path) -> None:
    path = iris_models_dir / "iris" / "1" / "metadata.json"
    document = json.loads(path.read_text())
    del document["reference"]
    assert BundleMetadata.model_validate(document).reference is None
    # the metadata file round-trips, categories keeping their JSON types
    metadata = BundleMetadata.model_validate_json(path.read_text())
    again = BundleMetadata.model_validate_json(metadata.model_dump_json())
    assert again == metadata


def churn_sample_with_target(path: Path, rows: int = 60) -> Path:
    frame, target = churn_frame(rows)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["churned", *CHURN_COLUMNS])
        for label, row in zip(target, frame[CHURN_COLUMNS].itertuples(index=False), strict=True):
            writer.writerow([label, *row])
    return path


def test_package_takes_the_answers_from_the_target_column(tmp_path: Path, models_dir: Path) -> None:
    model = save(churn_pipeline(), tmp_path / "churn.joblib")
    sample = churn_sample_with_target(tmp_path / "sample.csv")
    said: list[str] = []
    meta = package(model, models_dir, "churn", "1", sample, target="churned", report=said.append)
    assert "training reference: 60 sample rows, answers from the --target column" in said
    frame, target = churn_frame(60)
    reference = meta.reference
    assert reference is not None
    assert reference.rows == 60
    assert [f.name for f in meta.features] == CHURN_COLUMNS  # the target is not a feature
    assert_numeric(reference.features["monthly_spend"], frame["monthly_spend"].tolist())
    plans, counts = np.unique(frame["plan"], return_counts=True)
    assert categories(reference.features["plan"]) == [
        *zip(plans.tolist(), (counts / 60).tolist(), strict=True),
        (None, 0.0),
    ]
    assert reference.prediction.source == "labels"
    assert categories(reference.prediction) == [
        ("churn", float(np.mean(target == "churn"))),
        ("stay", float(np.mean(target == "stay"))),
        (None, 0.0),
    ]
    # the bundle on disk holds it, and loads
    assert load_bundle(models_dir / "churn" / "1").metadata.reference == reference


def test_package_without_a_target_uses_the_models_predictions(
    tmp_path: Path, models_dir: Path
) -> None:
    model = churn_pipeline()
    sample = churn_sample_with_target(tmp_path / "sample.csv")
    meta = package(save(model, tmp_path / "c.joblib"), models_dir, "churn", "1", sample)
    frame, _ = churn_frame(60)
    predicted = model.predict(frame[CHURN_COLUMNS])
    assert meta.reference is not None
    assert meta.reference.prediction.source == "predictions"
    assert categories(meta.reference.prediction) == [
        ("churn", float(np.mean(predicted == "churn"))),
        ("stay", float(np.mean(predicted == "stay"))),
        (None, 0.0),
    ]


def test_package_without_a_sample_has_no_reference_and_says_so(
    tmp_path: Path, models_dir: Path
) -> None:
    x, y = load_iris(return_X_y=True)
    said: list[str] = []
    model = save(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "m.joblib")
    meta = package(model, models_dir, "plain", "1", report=said.append)
    assert meta.reference is None
    assert any("no training reference (no --sample)" in line for line in said)
    with pytest.raises(PackagingError, match="--target names a column of the sample"):
        package(model, models_dir, "plain", "2", target="label")


def test_numeric_classes_from_a_target_column_of_a_model_without_feature_names(
    tmp_path: Path, models_dir: Path
) -> None:
    """The target column is left out of the features the sample's header names, and its text
    becomes the model's own classes (integers here)."""
    x, y = load_iris(return_X_y=True)
    model = save(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "m.joblib")
    sample = tmp_path / "sample.csv"
    with sample.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "species", "c", "d"])
        writer.writerows([*row[:2], label, *row[2:]] for row, label in zip(x, y, strict=True))
    meta = package(model, models_dir, "numbers", "1", sample, target="species")
    assert [f.name for f in meta.features] == ["a", "b", "c", "d"]
    assert meta.reference is not None
    assert categories(meta.reference.prediction) == [
        (0, 50 / 150),
        (1, 50 / 150),
        (2, 50 / 150),
        (None, 0.0),
    ]
    assert all(type(b.category) is int for b in meta.reference.prediction.bins[:3])
    assert_numeric(meta.reference.features["c"], x[:, 2].tolist())
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,species,c,d\n1,2,7,3,4\n")
    with pytest.raises(PackagingError, match="'7', which is none of the model's classes"):
        package(model, models_dir, "numbers", "2", bad, target="species")
    with pytest.raises(PackagingError, match="no --target column 'kind'"):
        package(model, models_dir, "numbers", "2", sample, target="kind")


def test_a_target_that_is_a_feature_is_refused(tmp_path: Path, models_dir: Path) -> None:
    model = save(churn_pipeline(), tmp_path / "churn.joblib")
    sample = churn_sample_with_target(tmp_path / "sample.csv")
    with pytest.raises(PackagingError, match="'plan' is one of the model's features"):
        package(model, models_dir, "churn", "1", sample, target="plan")


def test_regressor_reference_bins_its_targets(tmp_path: Path, models_dir: Path) -> None:
    from sklearn.linear_model import Ridge

    frame, _ = churn_frame(80)
    model = Ridge().fit(frame[["tenure_months"]], frame["monthly_spend"])
    sample = tmp_path / "spend.csv"
    frame[["tenure_months", "monthly_spend"]].to_csv(sample, index=False)
    model_path = save(model, tmp_path / "r.joblib")
    meta = package(model_path, models_dir, "spend", "1", sample, target="monthly_spend")
    assert meta.reference is not None
    assert meta.reference.prediction.source == "labels"
    assert_numeric(meta.reference.prediction, frame["monthly_spend"].tolist())
    bad = tmp_path / "bad.csv"
    bad.write_text("tenure_months,monthly_spend\n3,lots\n")
    with pytest.raises(PackagingError, match="'lots', not a finite number"):
        package(model_path, models_dir, "spend", "2", bad, target="monthly_spend")


def test_cli_target(tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save(churn_pipeline(), tmp_path / "churn.joblib")
    sample = churn_sample_with_target(tmp_path / "sample.csv")
    args = [str(model), "--name", "churn", "--version", "1", "--models-dir", str(models_dir)]
    assert main([*args, "--sample", str(sample), "--target", "churned"]) == 0
    assert "answers from the --target column" in capsys.readouterr().out
    metadata = json.loads((models_dir / "churn" / "1" / "metadata.json").read_text())
    assert metadata["reference"]["prediction"]["source"] == "labels"
    assert metadata["reference"]["rows"] == 60


def test_repackage_keeps_the_reference(iris_models_dir: Path) -> None:
    bundle_dir = iris_models_dir / "iris" / "1"
    before = read_metadata(bundle_dir)
    make_legacy(bundle_dir, load_bundle(bundle_dir).model)
    after = repackage(iris_models_dir, "iris", "1", report=lambda _: None)
    assert after.reference is not None
    assert after.reference == before.reference
