from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
import sklearn.base

from berth_api.bundles.bundle import load_bundle
from berth_api.bundles.package import PackagingError, main, package
from berth_api.serving.predictor import Predictor
from tests.models import (
    churn_pipeline,
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
    bundle = load_bundle(models_dir / "churn" / "3")
    [out] = Predictor.for_bundle(bundle).predict([[3.0, 80.0, "basic", "eu"]])
    assert out.label == "churn"
    assert out.probabilities is not None
    assert set(out.probabilities) == {"churn", "stay"}


def test_regressor_without_sample_gets_positional_names(tmp_path: Path, models_dir: Path) -> None:
    meta = package(save(spend_regressor(), tmp_path / "r.joblib"), models_dir, "spend", "1")
    assert (meta.task, meta.classes, [f.name for f in meta.features]) == (
        "regression",
        None,
        ["x0"],
    )
    [out] = Predictor.for_bundle(load_bundle(models_dir / "spend" / "1")).predict([[12.0]])
    assert isinstance(out.label, float)
    assert out.probabilities is None


def test_classifier_without_predict_proba(tmp_path: Path, models_dir: Path) -> None:
    meta = package(save(no_proba_classifier(), tmp_path / "svc.joblib"), models_dir, "svc", "1")
    assert meta.classes == ["churn", "stay"]
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


def test_cli(tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save(churn_pipeline(), tmp_path / "churn.joblib")
    sample = write_sample(tmp_path / "sample.csv")
    args = [str(model), "--name", "churn", "--version", "3", "--sample", str(sample)]
    assert main([*args, "--models-dir", str(models_dir)]) == 0
    assert "packaged churn/3" in capsys.readouterr().out
    metadata = json.loads((models_dir / "churn" / "3" / "metadata.json").read_text())
    assert metadata["name"] == "churn"
    assert main([*args, "--models-dir", str(models_dir)]) == 1
    assert "already exists" in capsys.readouterr().err
