"""The compiled inference path: a bundle's model as an ONNX graph, run by onnxruntime.

scikit-learn spends milliseconds per call in Python and input validation (about 4 ms for a
100-tree forest, whatever the batch size); the same forest compiled to ONNX answers one row in
microseconds. It is only used where it is exact: packaging converts the model, runs both on the
sample plus generated rows spanning its ranges, and keeps the graph only when every label is
equal and every probability (or regression value) is within TOLERANCE. Anything that does not
convert or does not match is served by scikit-learn, as before.

Trees are converted with float32 inputs because scikit-learn's trees compare float32 features
(it casts X itself); other models are tried in float64 first, which is what they compute in.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berth_api.bundles.bundle import CompiledSpec, FeatureSpec, ModelBundle
from berth_api.errors import UnpredictableInput
from berth_api.serving.features import Value
from berth_api.serving.predictor import (
    ModelOutput,
    Predictor,
    check_finite_rows,
    class_keys,
    classification_outputs,
    refused,
    regression_outputs,
)

logger = logging.getLogger(__name__)

TOLERANCE = 1e-5
PROBABILITY_DECIMALS = 5
GENERATED_ROWS = 2000
_TREE_MODULES = ("sklearn.tree", "sklearn.ensemble._forest", "sklearn.ensemble._gb")


class NotCompiled(Exception):
    """Why a model is served by scikit-learn rather than a compiled graph."""


@dataclass(frozen=True)
class CompiledModel:
    graph: bytes
    spec: CompiledSpec


def compile_model(
    model: Any, features: Sequence[FeatureSpec], sample_rows: list[list[Value]]
) -> CompiledModel:
    """Converts `model` to ONNX and proves it equal to scikit-learn, or raises NotCompiled."""
    if any(f.type not in ("number", "integer") for f in features):
        raise NotCompiled("only models whose features are all numbers are compiled")
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    is_classifier = hasattr(model, "classes_")
    if is_classifier and not hasattr(model, "predict_proba"):
        raise NotCompiled("classifiers without predict_proba are not compiled")
    rows = verification_rows(sample_rows, features)
    expected = Predictor(model, features).predict(rows)
    dtypes = ["float32", "float64"]
    if not type(final).__module__.startswith(_TREE_MODULES):
        dtypes.reverse()
    reasons = []
    for dtype in dtypes:
        try:
            graph = _convert(model, final, len(features), dtype, is_classifier)
            predictor = CompiledPredictor(graph, dtype, model, threads=1)
            actual = predictor.predict(rows)
        except NotCompiled as exc:
            reasons.append(f"{dtype}: {exc}")
            continue
        except (UnpredictableInput, ValueError, RuntimeError, TypeError) as exc:
            reasons.append(f"{dtype}: onnxruntime failed: {type(exc).__name__}")
            continue
        mismatch, max_diff = compare(expected, actual)
        if mismatch:
            reasons.append(f"{dtype}: {mismatch}")
            continue
        return CompiledModel(
            graph,
            CompiledSpec(
                sha256=hashlib.sha256(graph).hexdigest(),
                input_type=dtype,
                converter=_converter_version(),
                verified_rows=len(rows),
                max_abs_diff=max_diff,
                tolerance=TOLERANCE,
            ),
        )
    raise NotCompiled("; ".join(reasons))


def _short(exc: BaseException) -> str:
    """Converter errors can print a whole tree's attributes: keep the first line, briefly."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}"


def verification_rows(
    sample_rows: list[list[Value]], features: Sequence[FeatureSpec], count: int = GENERATED_ROWS
) -> list[list[Value]]:
    """The sample, plus rows drawn across (and a little beyond) each feature's sample range, so
    that a graph is checked on more than the handful of rows a sample usually has."""
    sample = np.asarray(sample_rows, dtype=np.float64)
    low, high = sample.min(axis=0), sample.max(axis=0)
    span = np.where(high > low, high - low, np.abs(high) + 1.0)
    rng = np.random.default_rng(20261122)
    drawn = rng.uniform(low - 0.1 * span, high + 0.1 * span, size=(count, len(features)))
    for column, feature in enumerate(features):
        if feature.type == "integer":
            drawn[:, column] = np.round(drawn[:, column])
    # one decimal, like most measured data: values on a tree's split points get tested too
    decimals = np.round(drawn[: count // 2], 1)
    generated: list[list[Value]] = np.vstack([decimals, drawn[count // 2 :]]).tolist()
    return [list(row) for row in sample_rows] + generated


def compare(expected: list[ModelOutput], actual: list[ModelOutput]) -> tuple[str, float]:
    """('', largest difference) when equal within TOLERANCE, else (what differs, difference)."""
    max_diff = 0.0
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if want.probabilities is None:
            if got.probabilities is not None or not isinstance(got.label, int | float):
                return f"row {index}: output kind differs", max_diff
            diff = abs(float(want.label) - float(got.label))
            max_diff = max(max_diff, diff)
            if diff > TOLERANCE * max(1.0, abs(float(want.label))):
                return f"row {index}: value differs by {diff:.3g}", max_diff
            continue
        if want.label != got.label or type(want.label) is not type(got.label):
            return f"row {index}: label {got.label!r} instead of {want.label!r}", max_diff
        if got.probabilities is None or got.probabilities.keys() != want.probabilities.keys():
            return f"row {index}: classes differ", max_diff
        for key, p in want.probabilities.items():
            diff = abs(p - got.probabilities[key])
            max_diff = max(max_diff, diff)
            if diff > TOLERANCE:
                return f"row {index}: probability of {key} differs by {diff:.3g}", max_diff
    return "", max_diff


# The GPU image's onnxruntime-gpu offers CUDA: the nodes it implements there run on the GPU, the
# others (scikit-learn's tree and linear operators among them) on the CPU. The CPU image's
# onnxruntime offers no CUDA, so it gets the CPU alone, as always.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def providers(ort: Any) -> list[str]:
    """The execution providers of PREFERRED_PROVIDERS this onnxruntime build offers."""
    available = set(ort.get_available_providers())
    return [name for name in PREFERRED_PROVIDERS if name in available] or ["CPUExecutionProvider"]


class CompiledPredictor:
    """Runs the bundle's ONNX graph; outputs are shaped exactly like `Predictor`'s."""

    engine = "onnxruntime"

    @classmethod
    def for_bundle(cls, bundle: ModelBundle, threads: int) -> CompiledPredictor:
        spec = bundle.metadata.compiled
        if bundle.compiled is None or spec is None:
            raise NotCompiled("the bundle carries no verified compiled model")
        return cls(bundle.compiled, spec.input_type, bundle.model, threads=threads)

    def __init__(self, graph: bytes, input_type: str, model: Any, *, threads: int) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        # One thread per process by default: several API processes each starting a thread per
        # core would fight over the cores (the OpenMP trap).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(graph, options, providers=providers(ort))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise NotCompiled(f"onnxruntime cannot load the graph ({_short(exc)})") from exc
        self._input = self._session.get_inputs()[0].name
        self._dtype = np.float32 if input_type == "float32" else np.float64
        classes = getattr(model, "classes_", None)
        self._class_keys = class_keys(classes) if classes is not None else None
        self._classes = classes
        outputs = [o.name for o in self._session.get_outputs()]
        if self._class_keys is not None and len(outputs) != 2:
            raise NotCompiled(f"expected label and probabilities outputs, got {outputs}")

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        """Blocking: run it in a thread, never on the event loop."""
        try:
            matrix = np.asarray(rows, dtype=self._dtype)
            if not np.isfinite(matrix).all():
                # float32 overflows to infinity where float64 did not: refuse like sklearn does
                raise ValueError("input holds values too large for the model's float type")
            outputs = self._session.run(None, {self._input: matrix})
        except Exception as exc:  # numpy's and onnxruntime's own errors alike: a 422
            raise refused(len(rows), exc) from exc
        if self._class_keys is None:
            return regression_outputs(np.asarray(outputs[0], dtype=np.float64).reshape(-1))
        labels, proba = outputs
        check_finite_rows(proba)
        if proba.dtype == np.float32:
            # A float32 sum of a hundred trees' votes is off by up to about 1e-6 (0.99999934 for
            # 1.0). Five decimals is as much as it knows: 1.0 and 0.97 read as scikit-learn's do,
            # and packaging checked the rounded values against scikit-learn's, within TOLERANCE.
            proba_rows = np.round(proba.astype(np.float64), PROBABILITY_DECIMALS).tolist()
        else:
            proba_rows = proba.tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = np.asarray(labels).astype(np.asarray(self._classes).dtype, copy=False)
        return classification_outputs(labels, proba_rows, self._class_keys)


def _convert(model: Any, final: Any, n_features: int, dtype: str, is_classifier: bool) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.exceptions import MissingShapeCalculator

    options = {id(final): {"zipmap": False}} if is_classifier else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onx = to_onnx(model, np.zeros((1, n_features), dtype=dtype), options=options)
    except (MissingShapeCalculator, RuntimeError, NotImplementedError, ValueError) as exc:
        raise NotCompiled(f"skl2onnx cannot convert it ({_short(exc)})") from exc
    except Exception as exc:  # converters raise anything; the model stays on scikit-learn
        raise NotCompiled(f"skl2onnx failed ({_short(exc)})") from exc
    return bytes(onx.SerializeToString())


def _converter_version() -> str:
    import skl2onnx

    return f"skl2onnx {skl2onnx.__version__}, onnxruntime {_onnxruntime().__version__}"


def _onnxruntime() -> Any:
    """onnxruntime, with its usage telemetry (1DS, in its Linux builds too) switched off: a model
    server has no business reporting to anyone. The image also sets ORT_DISABLE_TELEMETRY."""
    import onnxruntime

    onnxruntime.disable_telemetry_events()
    return onnxruntime
