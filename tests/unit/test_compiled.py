"""The compiled (ONNX) path: used only where packaging proved it equal to scikit-learn."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from berth_api.bundles.bundle import FeatureSpec, load_bundle, write_bundle
from berth_api.errors import UnpredictableInput
from berth_api.monitoring import ApiMetrics
from berth_api.serving.batching import ModelBatcher
from berth_api.serving.compiled import (
    TOLERANCE,
    CompiledPredictor,
    NotCompiled,
    compare,
    compile_model,
)
from berth_api.serving.predictor import ModelOutput, Predictor
from berth_api.serving.registry import choose_predictor
from berth_common.settings import ApiSettings

IRIS = load_iris()
FEATURES = [FeatureSpec(name=f"f{i}") for i in range(4)]


def random_rows(count: int, seed: int = 1) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    low, high = IRIS.data.min(axis=0), IRIS.data.max(axis=0)
    rows: list[list[float]] = np.round(rng.uniform(low, high, size=(count, 4)), 2).tolist()
    return rows


def assert_same(expected: list[ModelOutput], actual: list[ModelOutput]) -> None:
    mismatch, max_diff = compare(expected, actual)
    assert mismatch == ""
    assert max_diff <= TOLERANCE


@pytest.mark.parametrize(
    ("model", "input_type"),
    [
        (RandomForestClassifier(n_estimators=30, random_state=3), "float32"),
        (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), "float64"),
    ],
    ids=["forest", "scaled-logistic"],
)
def test_classifiers_compile_and_match_scikit_learn(model: object, input_type: str) -> None:
    labels = np.asarray(IRIS.target_names)[IRIS.target]
    model.fit(IRIS.data, labels)  # type: ignore[attr-defined]
    compiled = compile_model(model, FEATURES, IRIS.data.tolist())
    assert compiled.spec.input_type == input_type
    assert compiled.spec.verified_rows > len(IRIS.data)
    rows = IRIS.data.tolist() + random_rows(500)
    onnx = CompiledPredictor(compiled.graph, input_type, model, threads=1)
    assert_same(Predictor(model, FEATURES).predict(rows), onnx.predict(rows))
    assert all(isinstance(o.label, str) for o in onnx.predict(rows[:3]))


def test_regressors_compile_and_match_scikit_learn() -> None:
    model = Ridge().fit(IRIS.data, IRIS.data[:, 0] * 2.5 - IRIS.data[:, 3])
    compiled = compile_model(model, FEATURES, IRIS.data.tolist())
    rows = random_rows(300)
    onnx = CompiledPredictor(compiled.graph, compiled.spec.input_type, model, threads=1)
    assert_same(Predictor(model, FEATURES).predict(rows), onnx.predict(rows))
    assert all(o.probabilities is None for o in onnx.predict(rows))


def test_models_with_non_numeric_features_are_not_compiled() -> None:
    features = [*FEATURES[:3], FeatureSpec(name="plan", type="string")]
    model = RandomForestClassifier(n_estimators=5).fit(IRIS.data, IRIS.target)
    with pytest.raises(NotCompiled, match="all numbers"):
        compile_model(model, features, [[5.1, 3.5, 1.4, "pro"]])


def test_compare_refuses_a_label_or_a_probability_off_by_more_than_the_tolerance() -> None:
    want = [ModelOutput("a", {"a": 0.6, "b": 0.4})]
    assert compare(want, [ModelOutput("a", {"a": 0.6 + 5e-6, "b": 0.4 - 5e-6})])[0] == ""
    assert "differs by" in compare(want, [ModelOutput("a", {"a": 0.6 + 2e-5, "b": 0.4})])[0]
    assert "label" in compare(want, [ModelOutput("b", {"a": 0.6, "b": 0.4})])[0]
    assert "value differs" in compare([ModelOutput(1.0, None)], [ModelOutput(1.1, None)])[0]


def test_a_graph_of_another_model_is_caught_by_the_comparison() -> None:
    labels = np.asarray(IRIS.target_names)[IRIS.target]
    model = RandomForestClassifier(n_estimators=30, random_state=3).fit(IRIS.data, labels)
    other = RandomForestClassifier(n_estimators=2, random_state=9).fit(IRIS.data, labels)
    wrong = compile_model(other, FEATURES, IRIS.data.tolist())
    onnx = CompiledPredictor(wrong.graph, "float32", model, threads=1)
    rows = random_rows(500)
    assert compare(Predictor(model, FEATURES).predict(rows), onnx.predict(rows))[0] != ""


def test_values_too_large_for_float32_are_a_422_not_a_crash() -> None:
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(IRIS.data, IRIS.target)
    compiled = compile_model(model, FEATURES, IRIS.data.tolist())
    onnx = CompiledPredictor(compiled.graph, "float32", model, threads=1)
    with pytest.raises(UnpredictableInput):
        onnx.predict([[1e300, 3.0, 1.0, 0.2]])


def test_the_bundle_carries_the_graph_and_the_api_serves_it(
    iris_models_dir: Path, api_settings: ApiSettings
) -> None:
    bundle = load_bundle(iris_models_dir / "iris" / "1")
    assert bundle.metadata.compiled is not None
    assert bundle.metadata.compiled.max_abs_diff <= TOLERANCE
    served = choose_predictor(bundle, api_settings)
    assert served.engine == "onnxruntime"
    rows = random_rows(400)
    assert_same(Predictor.for_bundle(bundle).predict(rows), served.predict(rows))
    forced = api_settings.model_copy(update={"compiled_models": False})
    assert choose_predictor(bundle, forced).engine == "scikit-learn"


def test_a_tampered_graph_is_not_served(tmp_path: Path, api_settings: ApiSettings) -> None:
    model = Ridge().fit(IRIS.data, IRIS.data[:, 0])
    compiled = compile_model(model, FEATURES, IRIS.data.tolist())
    write_bundle(
        tmp_path,
        model=model,
        name="line",
        version="1",
        features=FEATURES,
        compiled=(compiled.graph, compiled.spec),
    )
    bundle_dir = tmp_path / "line" / "1"
    assert load_bundle(bundle_dir).compiled == compiled.graph
    (bundle_dir / "model.onnx").write_bytes(compiled.graph + b"\0")
    bundle = load_bundle(bundle_dir)
    assert bundle.compiled is None
    assert choose_predictor(bundle, api_settings).engine == "scikit-learn"
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    assert meta["compiled"]["format"] == "onnx"


def test_one_refused_request_does_not_fail_those_batched_with_it() -> None:
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(IRIS.data, IRIS.target)
    compiled = compile_model(model, FEATURES, IRIS.data.tolist())
    predictor = CompiledPredictor(compiled.graph, "float32", model, threads=1)

    async def run() -> tuple[object, ...]:
        batcher = ModelBatcher(
            predictor, name="t", version="1", metrics=ApiMetrics(), max_size=64, max_wait_seconds=0
        )
        try:
            # gathered before the first call starts, so all three share one model call
            return await asyncio.gather(  # type: ignore[no-any-return]
                batcher.predict([[5.1, 3.5, 1.4, 0.2]]),
                batcher.predict([[1e300, 3.0, 1.0, 0.2]]),
                batcher.predict([[6.7, 3.0, 5.2, 2.3], [5.0, 3.4, 1.5, 0.2]]),
                return_exceptions=True,
            )
        finally:
            assert (batcher.calls, batcher.requests) == (1, 3)
            batcher.close()

    good, bad, pair = asyncio.run(run())
    assert isinstance(bad, UnpredictableInput)
    assert isinstance(good, list)
    assert isinstance(pair, list)
    assert [o.label for o in good + pair] == [0, 2, 0]
