from __future__ import annotations

import json
from pathlib import Path

import pytest

from berth_api.bundles.bundle import BundleError, load_bundle, read_metadata
from berth_api.bundles.package import PackagingError, package
from berth_api.bundles.repackage import main, repackage
from berth_api.bundles.trust import TrustPolicy
from berth_api.serving.compiled import verification_rows
from berth_api.serving.predictor import Predictor
from tests.models import (
    churn_frame,
    churn_pipeline,
    clipped_regressor,
    make_legacy,
    save,
    write_sample,
)

PICKLES = TrustPolicy(allow_pickle=True)


def test_iris_pickle_becomes_skops_with_everything_else_kept(
    iris_models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle_dir = iris_models_dir / "iris" / "1"
    make_legacy(bundle_dir, load_bundle(bundle_dir).model)
    before = load_bundle(bundle_dir, trust=PICKLES)
    assert main(["--name", "iris", "--version", "1", "--models-dir", str(iris_models_dir)]) == 0
    assert "repackaged iris/1 as model.skops" in capsys.readouterr().out
    assert sorted(p.name for p in bundle_dir.iterdir()) == [
        "metadata.json",
        "model.onnx",
        "model.skops",
    ]
    after = load_bundle(bundle_dir)  # the default policy: no pickles
    kept = {"features", "classes", "metrics", "description", "example", "compiled", "task"}
    old, new = before.metadata.model_dump(), after.metadata.model_dump()
    assert {key: new[key] for key in kept} == {key: old[key] for key in kept}
    assert (new["model_format"], old["model_format"]) == ("skops", "joblib")
    assert after.compiled == before.compiled
    rows = verification_rows([[5.1, 3.5, 1.4, 0.2]], before.metadata.features, count=300)
    features = before.metadata.features
    assert Predictor(after.model, features).predict(rows) == Predictor(
        before.model, features
    ).predict(rows)


def test_mixed_type_pipeline(tmp_path: Path, models_dir: Path) -> None:
    model = churn_pipeline()
    package(
        save(model, tmp_path / "c.joblib"),
        models_dir,
        "churn",
        "2",
        write_sample(tmp_path / "s.csv"),
    )
    bundle_dir = models_dir / "churn" / "2"
    make_legacy(bundle_dir, model)
    said: list[str] = []
    meta = repackage(models_dir, "churn", "2", report=said.append)
    assert meta.model_format == "skops"
    assert "equal to the pickle on 3 rows" in said[0]
    frame, _ = churn_frame(30)
    rows = frame.to_numpy().tolist()
    served = Predictor.for_bundle(load_bundle(bundle_dir)).predict(rows)
    assert served == Predictor(model, meta.features).predict(rows)
    # a second run has nothing to do
    assert repackage(models_dir, "churn", "2", report=said.append) == meta
    assert said[-1] == "churn/2 is already in skops format; nothing to do"


def test_what_skops_cannot_take_leaves_the_pickle_in_place(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = package(save(clipped_regressor(), tmp_path / "c.joblib"), models_dir, "clipped", "1")
    assert meta.model_format == "joblib"
    args = ["--name", "clipped", "--version", "1", "--models-dir", str(models_dir)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "refused, the bundle is unchanged" in err
    assert "does not trust: tests.models.ClippedRegressor" in err
    assert read_metadata(models_dir / "clipped" / "1") == meta
    assert main([*args, "--trusted-types", "tests.models.ClippedRegressor"]) == 0
    assert read_metadata(models_dir / "clipped" / "1").model_format == "skops"


def test_a_pickle_that_is_not_the_one_packaged_is_not_read(
    iris_models_dir: Path, tmp_path: Path
) -> None:
    bundle_dir = iris_models_dir / "iris" / "1"
    make_legacy(bundle_dir, load_bundle(bundle_dir).model)
    (bundle_dir / "model.joblib").write_bytes(b"\x80\x04N.")
    with pytest.raises(PackagingError, match="not the one packaged"):
        repackage(iris_models_dir, "iris", "1")
    with pytest.raises(PackagingError, match=r"metadata\.json is missing"):
        repackage(iris_models_dir, "iris", "2")


def test_another_scikit_learn_version_needs_the_flag(iris_models_dir: Path) -> None:
    bundle_dir = iris_models_dir / "iris" / "1"
    make_legacy(bundle_dir, load_bundle(bundle_dir).model)
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    metadata["sklearn_version"] = "0.99.0"
    (bundle_dir / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(PackagingError, match="pass --allow-version-mismatch"):
        repackage(iris_models_dir, "iris", "1")
    with pytest.raises(BundleError, match="pickles are refused"):
        load_bundle(bundle_dir, allow_version_mismatch=True)
    assert repackage(iris_models_dir, "iris", "1", allow_version_mismatch=True).model_format == (
        "skops"
    )
