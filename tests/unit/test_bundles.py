from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skops
from sklearn.linear_model import LinearRegression

from berth_api.bundles.bundle import (
    BundleError,
    FeatureSpec,
    bundle_dirs,
    file_sha256,
    load_bundle,
    write_bundle,
)
from berth_api.bundles.trust import TrustPolicy
from berth_api.serving.predictor import Predictor
from tests.models import make_legacy


def test_demo_bundle_metadata(iris_models_dir: Path) -> None:
    bundle_dir = iris_models_dir / "iris" / "1"
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    assert meta["classes"] == ["setosa", "versicolor", "virginica"]
    assert [f["name"] for f in meta["features"]] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert (meta["model_format"], meta["skops_version"]) == ("skops", skops.__version__)
    assert meta["sha256"] == file_sha256(bundle_dir / "model.skops")
    assert not (bundle_dir / "model.joblib").exists()
    assert 0.85 < meta["metrics"]["accuracy"] <= 1.0
    assert meta["estimator"] == "RandomForestClassifier"
    for key in ("created_at", "python_version", "sklearn_version"):
        assert meta[key]


def test_demo_is_deterministic(iris_models_dir: Path, tmp_path: Path) -> None:
    from berth_api.bundles.train import train_demo

    again = train_demo(tmp_path)
    original = json.loads((iris_models_dir / "iris/1/metadata.json").read_text())
    assert again.metrics["accuracy"] == original["metrics"]["accuracy"]
    bundle = load_bundle(tmp_path / "iris" / "1")
    out = Predictor.for_bundle(bundle).predict([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert [o.label for o in out] == ["setosa", "virginica"]
    assert out[0].probabilities is not None
    assert sum(out[0].probabilities.values()) == pytest.approx(1.0)


def test_tampered_model_is_refused(iris_models_dir: Path) -> None:
    model_file = iris_models_dir / "iris" / "1" / "model.skops"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(
        BundleError, match=r"sha256 of .* is [0-9a-f]{64}, but metadata\.json records"
    ):
        load_bundle(model_file.parent)


def test_version_mismatch_is_refused_unless_allowed(iris_models_dir: Path) -> None:
    meta_file = iris_models_dir / "iris" / "1" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["sklearn_version"] = "0.0.1"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"made with scikit-learn 0\.0\.1, this server runs"):
        load_bundle(meta_file.parent)
    assert load_bundle(meta_file.parent, allow_version_mismatch=True).version == "1"


def test_bundles_made_before_skops_still_load_as_pickles(iris_models_dir: Path) -> None:
    """Their metadata.json has no model_format: it reads as joblib, served when allowed."""
    bundle_dir = iris_models_dir / "iris" / "1"
    make_legacy(bundle_dir, load_bundle(bundle_dir).model)
    assert "model_format" not in json.loads((bundle_dir / "metadata.json").read_text())
    with pytest.raises(BundleError, match="pickles are refused"):
        load_bundle(bundle_dir)
    bundle = load_bundle(bundle_dir, trust=TrustPolicy(allow_pickle=True))
    assert bundle.metadata.model_format == "joblib"
    assert bundle.compiled is not None


def test_a_model_that_reads_back_differently_is_not_written_as_skops(models_dir: Path) -> None:
    model = LinearRegression().fit(np.array([[0.0], [1.0]]), np.array([0.0, 1.0]))

    def differs(copy: object) -> None:
        raise BundleError("the model read back predicts something else")

    said: list[str] = []
    line = {"model": model, "name": "line", "version": "1", "features": [FeatureSpec(name="x")]}
    with pytest.raises(BundleError, match="cannot be written in the safe skops format: the model"):
        write_bundle(models_dir, **line, verify=differs, pickle_fallback=False)
    assert not (models_dir / "line" / "1").exists()
    meta = write_bundle(models_dir, **line, verify=differs, report=said.append)
    assert meta.model_format == "joblib"
    assert "predicts something else" in said[0]
    assert f"line/1={meta.sha256}" in said[0]


def test_directory_must_match_metadata(iris_models_dir: Path) -> None:
    (iris_models_dir / "iris" / "1").rename(iris_models_dir / "iris" / "2")
    with pytest.raises(BundleError, match="must be <name>/<version>"):
        load_bundle(iris_models_dir / "iris" / "2")


def test_regressor_bundle(models_dir: Path) -> None:
    model = LinearRegression().fit(np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0]))
    meta = write_bundle(
        models_dir, model=model, name="line", version="1", features=[FeatureSpec(name="x")]
    )
    assert (meta.task, meta.classes) == ("regression", None)
    out = Predictor.for_bundle(load_bundle(models_dir / "line" / "1")).predict([[3.0]])
    assert out[0].label == pytest.approx(7.0)
    assert out[0].probabilities is None


def test_existing_version_is_not_overwritten_by_default(iris_models_dir: Path) -> None:
    model = LinearRegression().fit(np.array([[0.0], [1.0]]), np.array([0.0, 1.0]))
    with pytest.raises(BundleError, match="already exists"):
        write_bundle(iris_models_dir, model=model, name="iris", version="1", features=[])


def test_bad_names_are_refused(models_dir: Path) -> None:
    with pytest.raises(BundleError, match=r"bundle name '\.\./x'"):
        write_bundle(models_dir, model=object(), name="../x", version="1", features=[])


def test_versions_sort_numerically(models_dir: Path) -> None:
    for version in ("2", "10", "1"):
        (models_dir / "m" / version).mkdir(parents=True)
        (models_dir / "m" / version / "metadata.json").write_text("{}")
    (models_dir / "m" / ".tmp").mkdir()
    assert [p.name for p in bundle_dirs(models_dir)["m"]] == ["1", "2", "10"]


def test_non_finite_model_output_is_a_422(models_dir: Path) -> None:
    from berth_api.errors import UnpredictableInput

    model = LinearRegression().fit(np.array([[0.0], [1.0]]), np.array([0.0, 1.0]))
    model.coef_ = np.array([1e300])  # any input above 1e8 now overflows to infinity
    write_bundle(
        models_dir, model=model, name="line", version="1", features=[FeatureSpec(name="x")]
    )
    predictor = Predictor.for_bundle(load_bundle(models_dir / "line" / "1"))
    with pytest.raises(UnpredictableInput, match=r"row\(s\) \[1\]"):
        predictor.predict([[1.0], [1e10]])


def test_input_the_model_refuses_is_a_422(iris_models_dir: Path) -> None:
    from berth_api.errors import UnpredictableInput

    predictor = Predictor.for_bundle(load_bundle(iris_models_dir / "iris" / "1"))
    # finite in float64, too large for the float32 that tree models work in
    with pytest.raises(UnpredictableInput, match="could not predict these rows"):
        predictor.predict([[1e300, 1.0, 1.0, 1.0]])
