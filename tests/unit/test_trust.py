"""The trust policy: what a model file may make Berth run, decided before it runs anything."""

from __future__ import annotations

import json
import operator
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from berth_api.bundles.bundle import (
    BundleError,
    FeatureSpec,
    file_sha256,
    load_bundle,
    write_bundle,
)
from berth_api.bundles.trust import TrustPolicy, is_library_class, untrusted_types
from berth_api.serving.predictor import Predictor
from tests.models import MarkedModel

LINE = LinearRegression().fit(np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0]))
X = [FeatureSpec(name="x")]


@pytest.mark.parametrize(
    ("name", "trusted"),
    [
        ("sklearn.tree._tree.Tree", True),
        ("numpy.ndarray", True),
        ("scipy.sparse.csr_matrix", True),
        # functions of the same packages: a file could call them with arguments of its choosing
        ("sklearn.utils.validation.check_array", False),
        ("numpy.load", False),
        ("numpy.ctypeslib.load_library", False),
        # a name re-exported into a library module is not that library's class
        ("sklearn.datasets._base.Path", False),
        # modules that run a program when imported are not even imported
        ("numpy.f2py.__main__.main", False),
        ("sklearn.no_such_module.Thing", False),
        ("sklearn.tree.NoSuchClass", False),
        ("os.system", False),
        ("builtins.eval", False),
        ("tests.models.ClippedRegressor", False),
        ("sklearnx.Thing", False),
    ],
)
def test_library_classes(name: str, trusted: bool) -> None:
    assert is_library_class(name) is trusted


def test_operator_listed_types_are_trusted_too() -> None:
    needed = ["sklearn.tree._tree.Tree", "_operator.neg", "acme.Binner"]
    assert untrusted_types(needed, TrustPolicy()) == ["_operator.neg", "acme.Binner"]
    policy = TrustPolicy(trusted_types=frozenset({"acme.Binner"}))
    assert untrusted_types(needed, policy) == ["_operator.neg"]


def _skops_bundle(models_dir: Path, model: object) -> Path:
    """A bundle whose model.skops holds `model` whatever its types (write_bundle would refuse to
    write such a file as skops): what someone with write access to the volume could put there."""
    write_bundle(models_dir, model=LINE, name="m", version="1", features=X)
    bundle_dir = models_dir / "m" / "1"
    skops.io.dump(model, bundle_dir / "model.skops")
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    metadata["sha256"] = file_sha256(bundle_dir / "model.skops")
    (bundle_dir / "metadata.json").write_text(json.dumps(metadata))
    return bundle_dir


def test_skops_function_is_refused_by_name_unless_trusted(models_dir: Path) -> None:
    negate = make_pipeline(FunctionTransformer(func=operator.neg), LinearRegression())
    negate.fit(np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0]))
    bundle_dir = _skops_bundle(models_dir, negate)
    with pytest.raises(BundleError, match=r"needs types Berth does not trust: _operator\.neg\. .*"):
        load_bundle(bundle_dir)
    trusted = TrustPolicy(trusted_types=frozenset({"_operator.neg"}))
    bundle = load_bundle(bundle_dir, trust=trusted)
    assert Predictor.for_bundle(bundle).predict([[3.0]])[0].label == pytest.approx(7.0)


def test_untrusted_skops_type_runs_nothing(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal comes before the type's module is imported or any of its code runs."""
    marker = tmp_path / "ran"
    source = tmp_path / "src"
    source.mkdir()
    (source / "berth_sneaky.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "class Sneaky:\n"
        "    def predict(self, rows):\n"
        "        return rows\n"
    )
    monkeypatch.syspath_prepend(str(source))
    import berth_sneaky  # type: ignore[import-not-found]

    bundle_dir = _skops_bundle(models_dir, berth_sneaky.Sneaky())
    marker.unlink()
    monkeypatch.delitem(sys.modules, "berth_sneaky")
    with pytest.raises(
        BundleError, match=r"does not trust: berth_sneaky\.Sneaky\. .*TRUSTED_TYPES"
    ):
        load_bundle(bundle_dir)
    assert not marker.exists()
    # listed by the operator, it loads: that is what let it run
    trusted = TrustPolicy(trusted_types=frozenset({"berth_sneaky.Sneaky"}))
    assert type(load_bundle(bundle_dir, trust=trusted).model).__name__ == "Sneaky"
    assert marker.exists()


def _pickle_bundle(models_dir: Path, marker: Path) -> tuple[Path, str]:
    """A bundle whose model.joblib creates `marker` when unpickled, with a matching metadata
    sha256: integrity checks pass, only trust can refuse it."""
    lines: list[str] = []
    metadata = write_bundle(
        models_dir,
        model=MarkedModel(marker, LINE),
        name="marked",
        version="1",
        features=X,
        report=lines.append,
    )
    assert metadata.model_format == "joblib"
    assert f"PICKLE_SHA256 (comma-separated): marked/1={metadata.sha256}" in lines[0]
    assert not marker.exists()  # writing it did not load it either
    return models_dir / "marked" / "1", metadata.sha256


def test_pickle_is_refused_before_it_is_read(models_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    bundle_dir, sha256 = _pickle_bundle(models_dir, marker)
    with pytest.raises(BundleError) as refused:
        load_bundle(bundle_dir)
    assert not marker.exists()
    reason = str(refused.value)
    assert "model.joblib is a pickle, and pickles are refused" in reason
    assert "make repackage NAME=marked VERSION=1" in reason
    assert f"PICKLE_SHA256=marked/1={sha256}" in reason
    assert "ALLOW_PICKLE=true" in reason


def test_pickle_loads_when_allowed(models_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    bundle_dir, _ = _pickle_bundle(models_dir, marker)
    bundle = load_bundle(bundle_dir, trust=TrustPolicy(allow_pickle=True))
    assert marker.exists()
    assert Predictor.for_bundle(bundle).predict([[3.0]])[0].label == pytest.approx(7.0)


def test_pickle_loads_when_its_hash_is_pinned(models_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    bundle_dir, sha256 = _pickle_bundle(models_dir, marker)
    wrong = TrustPolicy(pickle_pins={"marked/1": "0" * 64}, allow_pickle=True)
    with pytest.raises(BundleError, match=r"PICKLE_SHA256 pins marked/1 to 0{64}; refusing"):
        load_bundle(bundle_dir, trust=wrong)  # a pin wins over ALLOW_PICKLE
    assert not marker.exists()
    other = TrustPolicy(pickle_pins={"marked/2": sha256})
    with pytest.raises(BundleError, match="pickles are refused"):
        load_bundle(bundle_dir, trust=other)
    assert not marker.exists()
    load_bundle(bundle_dir, trust=TrustPolicy(pickle_pins={"marked/1": sha256}))
    assert marker.exists()


def test_a_changed_pickle_is_refused_even_with_a_matching_metadata_hash(
    models_dir: Path, tmp_path: Path
) -> None:
    """The attack: replace model.joblib and its metadata.json together. The pin is elsewhere."""
    bundle_dir, sha256 = _pickle_bundle(models_dir, tmp_path / "first")
    pinned = TrustPolicy(pickle_pins={"marked/1": sha256})
    marker = tmp_path / "replaced"
    joblib.dump(MarkedModel(marker, LINE), bundle_dir / "model.joblib")
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    metadata["sha256"] = file_sha256(bundle_dir / "model.joblib")
    (bundle_dir / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match="not the one pinned"):
        load_bundle(bundle_dir, trust=pinned)
    assert not marker.exists()


def test_not_a_skops_file(models_dir: Path) -> None:
    write_bundle(models_dir, model=LINE, name="m", version="1", features=X)
    bundle_dir = models_dir / "m" / "1"
    (bundle_dir / "model.skops").write_bytes(b"not a zip archive")
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    metadata["sha256"] = file_sha256(bundle_dir / "model.skops")
    (bundle_dir / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"model\.skops is not a skops file"):
        load_bundle(bundle_dir)
