from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import joblib
import pytest
import sklearn.base

from berth_api.bundles.bundle import BundleError, FeatureSpec, load_bundle
from berth_api.bundles.package import PackagingError, main, package, same_predictions
from berth_api.bundles.train import main as train_main
from berth_api.bundles.trust import TrustPolicy
from berth_api.serving.features import Value
from berth_api.serving.predictor import Predictor
from tests.models import (
    churn_pipeline,
    clipped_regressor,
    no_proba_classifier,
    save,
    spend_regressor,
    write_sample,
)


def test_mixed_type_pipeline_with_sample(tmp_path: Path, models_dir: Path) -> None:
    model = save(churn_pipeline(), tmp_path / "churn.joblib")
    sample = write_sample(tmp_path / "sample.csv")
    meta = package(model, models_dir, "churn", "3", sample)
    assert [(f.name, f.type) for f in meta.features] == [
        ("tenure_months", "number"),
        ("monthly_spend", "number"),
        ("plan", "string"),
        ("region", "string"),
    ]
    assert meta.classes == ["churn", "stay"]
    assert meta.estimator == "Pipeline(ColumnTransformer -> LogisticRegression)"
    assert meta.model_format == "skops"
    assert sorted(p.name for p in (models_dir / "churn" / "3").iterdir()) == [
        "metadata.json",
        "model.skops",
    ]
    bundle = load_bundle(models_dir / "churn" / "3")
    [out] = Predictor.for_bundle(bundle).predict([[3.0, 80.0, "basic", "eu"]])
    assert out.label == "churn"
    assert out.probabilities is not None
    assert set(out.probabilities) == {"churn", "stay"}


def test_regressor_without_sample_gets_positional_names(tmp_path: Path, models_dir: Path) -> None:
    meta = package(save(spend_regressor(), tmp_path / "r.joblib"), models_dir, "spend", "1")
    assert (meta.task, meta.classes, [f.name for f in meta.features], meta.model_format) == (
        "regression",
        None,
        ["x0"],
        "skops",
    )
    [out] = Predictor.for_bundle(load_bundle(models_dir / "spend" / "1")).predict([[12.0]])
    assert isinstance(out.label, float)
    assert out.probabilities is None


def test_classifier_without_predict_proba(tmp_path: Path, models_dir: Path) -> None:
    meta = package(save(no_proba_classifier(), tmp_path / "svc.joblib"), models_dir, "svc", "1")
    assert (meta.classes, meta.model_format) == (["churn", "stay"], "skops")
    [out] = Predictor.for_bundle(load_bundle(models_dir / "svc" / "1")).predict([[2.0, 40.0]])
    assert out.label in ("churn", "stay")
    assert out.probabilities is None


def test_refuses_what_it_cannot_serve(tmp_path: Path, models_dir: Path) -> None:
    not_a_model = save({"weights": [1, 2]}, tmp_path / "dict.joblib")
    with pytest.raises(PackagingError, match="holds a dict, which has no predict"):
        package(not_a_model, models_dir, "x", "1")
    pipeline = save(churn_pipeline(), tmp_path / "churn.joblib")
    with pytest.raises(PackagingError, match="cannot predict the sample"):
        package(pipeline, models_dir, "churn", "1")  # no sample: strings read as numbers
    bad_sample = tmp_path / "bad.csv"
    bad_sample.write_text("tenure_months,plan\n1,basic\n")
    with pytest.raises(PackagingError, match="no column for feature"):
        package(pipeline, models_dir, "churn", "1", bad_sample)
    with pytest.raises(PackagingError, match="does not exist"):
        package(tmp_path / "nope.joblib", models_dir, "x", "1")
    with pytest.raises(PackagingError, match="bundle name"):
        package(save(spend_regressor(), tmp_path / "r.joblib"), models_dir, "../up", "1")
    assert not any(models_dir.iterdir())


def test_refuses_another_scikit_learn_version(
    tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = spend_regressor()
    with monkeypatch.context() as patched:
        patched.setattr(sklearn.base, "__version__", "0.99.0")
        joblib.dump(model, tmp_path / "old.joblib")
    with pytest.raises(PackagingError, match=r"saved with scikit-learn 0\.99\.0, this image runs"):
        package(tmp_path / "old.joblib", models_dir, "old", "1")
    meta = package(tmp_path / "old.joblib", models_dir, "old", "1", allow_version_mismatch=True)
    assert meta.sklearn_version == sklearn.__version__


def test_without_the_converters_it_says_where_to_package(
    tmp_path: Path,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The api image has no skl2onnx: packaging there refuses and names the packager image,
    unless the compiled form is not wanted; so does the demo trainer."""
    model = save(spend_regressor(), tmp_path / "r.joblib")
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # import fails as if not installed
    with pytest.raises(PackagingError, match=r"skl2onnx is not installed here: .*berth-packager"):
        package(model, models_dir, "spend", "1")
    assert not (models_dir / "spend").exists()
    meta = package(model, models_dir, "spend", "1", compile_onnx=False)
    assert meta.compiled is None
    assert train_main(["--models-dir", str(models_dir)]) == 1
    assert "berth train: refused: skl2onnx is not installed here" in capsys.readouterr().err
    assert not (models_dir / "iris").exists()


def test_cli(tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save(churn_pipeline(), tmp_path / "churn.joblib")
    sample = write_sample(tmp_path / "sample.csv")
    args = [str(model), "--name", "churn", "--version", "3", "--sample", str(sample)]
    assert main([*args, "--models-dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert "packaged churn/3" in out
    assert "file: model.skops, sha256 " in out
    metadata = json.loads((models_dir / "churn" / "3" / "metadata.json").read_text())
    assert metadata["name"] == "churn"
    assert main([*args, "--models-dir", str(models_dir)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_own_estimator_class_is_pickled_and_needs_a_pin(tmp_path: Path, models_dir: Path) -> None:
    said: list[str] = []
    model = save(clipped_regressor(), tmp_path / "clipped.joblib")
    meta = package(model, models_dir, "clipped", "1", report=said.append)
    assert meta.model_format == "joblib"
    [message] = [line for line in said if "pickle" in line]
    assert "needs types Berth does not trust: tests.models.ClippedRegressor" in message
    assert f"add this entry to PICKLE_SHA256 (comma-separated): clipped/1={meta.sha256}" in message
    bundle_dir = models_dir / "clipped" / "1"
    with pytest.raises(BundleError, match="pickles are refused"):
        load_bundle(bundle_dir)
    pinned = TrustPolicy(pickle_pins={"clipped/1": meta.sha256})
    [out] = Predictor.for_bundle(load_bundle(bundle_dir, trust=pinned)).predict([[12.0]])
    assert isinstance(out.label, float)


def test_trusted_types_make_an_own_class_skops(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the operator's TRUSTED_TYPES, the same model is written in skops' format instead; the
    api loads it only with the same list."""
    model = save(clipped_regressor(), tmp_path / "clipped.joblib")
    args = [str(model), "--name", "clipped", "--version", "1", "--models-dir", str(models_dir)]
    assert main([*args, "--trusted-types", "tests.models.ClippedRegressor"]) == 0
    assert "file: model.skops" in capsys.readouterr().out
    bundle_dir = models_dir / "clipped" / "1"
    with pytest.raises(BundleError, match=r"does not trust: tests\.models\.ClippedRegressor"):
        load_bundle(bundle_dir)
    trusted = TrustPolicy(trusted_types=frozenset({"tests.models.ClippedRegressor"}))
    assert load_bundle(bundle_dir, trust=trusted).metadata.model_format == "skops"
    with pytest.raises(SystemExit):
        main([*args, "--trusted-types", "not a type name"])
    assert "TRUSTED_TYPES entries are full names" in capsys.readouterr().err


def test_same_predictions_names_the_first_row_that_differs() -> None:
    model = spend_regressor()
    features = [FeatureSpec(name="x0")]
    rows: list[list[Value]] = [[1.0], [30.0]]
    check = same_predictions(model, features, rows)
    check(copy.deepcopy(model))
    shifted = copy.deepcopy(model)
    shifted.intercept_ += 1e-9
    with pytest.raises(BundleError, match=r"predicts .* for row 0, the original"):
        check(shifted)
