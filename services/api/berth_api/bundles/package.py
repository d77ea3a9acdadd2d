"""`python -m berth_api.bundles.package MODEL --name N --version V [--sample CSV [--target COL]]`.

Turns a fitted scikit-learn estimator or Pipeline saved with joblib into a bundle the API serves.
Reading that joblib file runs its code: the operator who packages it has chosen to trust it. The
bundle holds the model in skops' format, which the API loads without running code, whenever the
model read back from it gives the very same predictions; a model skops cannot represent with
trusted types is pickled, and the API loads it only once its hash is pinned (PICKLE_SHA256).
Feature names come from the estimator (`feature_names_in_`) or the sample's header, types from
the sample's values (numbers unless a sample says otherwise). Before anything is written, the
model must predict on the sample (or on a row of zeros) through the very code the API uses, so a
bundle that is written is a bundle that serves; what cannot be served is refused with the reason.
The sample is also the training reference the drift views measure served rows against
(reference.py): its features, and the answers in its `--target` column (the true labels or
values) or, without one, the model's own predictions on it. Without a sample there is none.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.exceptions import InconsistentVersionWarning

from berth_api.bundles.bundle import (
    BundleError,
    BundleMetadata,
    FeatureSpec,
    FeatureType,
    Label,
    ReferenceSpec,
    write_bundle,
)
from berth_api.bundles.reference import model_classes, training_reference
from berth_api.bundles.trust import TrustPolicy
from berth_api.errors import BerthError
from berth_api.serving.compiled import CompiledModel, NotCompiled, compile_model
from berth_api.serving.features import Value, rows_from_instances
from berth_api.serving.predictor import Predictor
from berth_common.settings import parse_trusted_types

# Sample rows the model's skops copy and compiled form are compared with it on (every row is
# checked through the API's validation and predictor).
SAMPLE_ROWS_CHECKED = 100
# What compiling imports that serving does not: the packager image has them, the api image not
# (requirements/packaging.txt).
CONVERTERS = frozenset({"skl2onnx", "onnx"})


class PackagingError(Exception):
    """What the model or the sample lacks for the API to serve it; the message says what."""


def load_model(path: Path, *, allow_version_mismatch: bool = False) -> Any:
    if not path.is_file():
        raise PackagingError(f"{path} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            model = joblib.load(path)
        except InconsistentVersionWarning as warning:
            if not allow_version_mismatch:
                raise PackagingError(
                    f"{path} was saved with scikit-learn {warning.original_sklearn_version}, "
                    f"this image runs {sklearn.__version__}; re-save it with "
                    f"{sklearn.__version__}, or pass --allow-version-mismatch"
                ) from None
            warnings.simplefilter("ignore", InconsistentVersionWarning)
            model = joblib.load(path)
        except Exception as exc:  # unpickling raises whatever the pickled code raises
            raise PackagingError(f"{path} could not be loaded with joblib: {exc!r}") from exc
    if not hasattr(model, "predict"):
        raise PackagingError(f"{path} holds a {type(model).__name__}, which has no predict()")
    return model


def read_sample(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            raise PackagingError(f"{path} is empty; it needs a header row and rows") from None
        rows = [row for row in reader if row]
    if not rows:
        raise PackagingError(f"{path} has a header but no rows")
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise PackagingError(
                f"{path} line {line} has {len(row)} fields, the header {len(header)}"
            )
    return header, rows


def split_target(
    model: Any, sample: tuple[list[str], list[list[str]]], target: str
) -> tuple[tuple[list[str], list[list[str]]], list[Label]]:
    """The sample without its `target` column, and that column's values typed as the model
    answers: one of its classes (as a string, a number or a boolean), or a number."""
    header, rows = sample
    if target not in header:
        raise PackagingError(f"the sample has no --target column {target!r}")
    if target in [str(name) for name in getattr(model, "feature_names_in_", [])]:
        raise PackagingError(f"--target {target!r} is one of the model's features")
    index = header.index(target)
    texts = [row[index] for row in rows]
    rest = (
        [name for i, name in enumerate(header) if i != index],
        [[value for i, value in enumerate(row) if i != index] for row in rows],
    )
    classes = model_classes(model)
    if classes is None:
        return rest, [_target_value(text, target) for text in texts]
    return rest, [_class_of(text, classes, target) for text in texts]


def _target_value(text: str, target: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise PackagingError(f"--target {target!r} holds {text[:64]!r}, not a finite number")
    return value


def _class_of(text: str, classes: list[Label], target: str) -> Label:
    """The class `text` spells: its very string form, true/false in any case for a boolean
    class, or the number it equals for a numeric one."""
    for label in classes:
        if str(label) == text:
            return label
    lowered = text.strip().lower()
    for label in classes:
        if isinstance(label, bool):
            if lowered == str(label).lower():
                return label
        elif isinstance(label, int | float):
            try:
                if float(lowered) == label:
                    return label
            except ValueError:
                pass
    raise PackagingError(
        f"--target {target!r} holds {text[:64]!r}, which is none of the model's classes "
        f"{classes[:20]}"
    )


def infer_features(
    model: Any, sample: tuple[list[str], list[list[str]]] | None
) -> list[FeatureSpec]:
    names = _feature_names(model, sample)
    if sample is None:
        return [FeatureSpec(name=name, type="number") for name in names]
    header, rows = sample
    missing = [name for name in names if name not in header]
    if missing:
        raise PackagingError(f"the sample has no column for feature(s): {', '.join(missing)}")
    columns = {name: [row[header.index(name)] for row in rows] for name in names}
    return [FeatureSpec(name=name, type=_column_type(columns[name])) for name in names]


def _feature_names(model: Any, sample: tuple[list[str], list[list[str]]] | None) -> list[str]:
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is not None:
        return [str(name) for name in fitted]
    count = getattr(model, "n_features_in_", None)
    if sample is not None:
        header = sample[0]
        if count is not None and count != len(header):
            raise PackagingError(
                f"the model takes {count} features, the sample has {len(header)} columns"
            )
        return header
    if count is None:
        raise PackagingError(
            "the model records neither feature_names_in_ nor n_features_in_; pass --sample "
            "with a header row naming the features in order"
        )
    return [f"x{i}" for i in range(int(count))]


def _column_type(values: list[str]) -> FeatureType:
    def all_parse(kind: type) -> bool:
        try:
            for value in values:
                kind(value)
        except ValueError:
            return False
        return True

    lowered = {value.strip().lower() for value in values}
    if lowered <= {"true", "false"}:
        return "boolean"
    if all_parse(float) and all(np.isfinite(float(v)) for v in values):
        return "number"
    return "string"


def sample_instances(
    features: list[FeatureSpec], sample: tuple[list[str], list[list[str]]] | None
) -> list[dict[str, Any]]:
    if sample is None:
        return [{feature.name: _zero(feature.type) for feature in features}]
    header, rows = sample
    return [{f.name: _parse(row[header.index(f.name)], f.type) for f in features} for row in rows]


def _zero(kind: FeatureType) -> Any:
    return {"number": 0.0, "integer": 0, "boolean": False, "string": ""}[kind]


def _parse(value: str, kind: FeatureType) -> Any:
    if kind == "number":
        return float(value)
    if kind == "integer":
        return int(value)
    if kind == "boolean":
        return value.strip().lower() == "true"
    return value


def check_serves(
    model: Any, features: list[FeatureSpec], instances: list[dict[str, Any]]
) -> list[list[Value]]:
    """Predicts the sample through the API's own validation and predictor; the rows predicted."""
    if getattr(model, "n_outputs_", 1) != 1:
        raise PackagingError("models with several outputs per row are not supported")
    classes = getattr(model, "classes_", None)
    if classes is not None and np.ndim(classes) != 1:
        raise PackagingError("multi-label classifiers (2-D classes_) are not supported")
    metadata = BundleMetadata(
        name="candidate",
        version="0",
        created_at=datetime.now(UTC),
        task="classification" if classes is not None else "regression",
        estimator=type(model).__name__,
        features=features,
        python_version="",
        sklearn_version=sklearn.__version__,
        joblib_version=joblib.__version__,
        sha256="0" * 64,
    )
    try:
        rows = rows_from_instances(
            metadata, instances, max_rows=len(instances), max_string_length=10**6
        )
        Predictor(model, features).predict(rows)
    except BerthError as exc:
        raise PackagingError(f"the model cannot predict the sample: {exc.detail}") from exc
    except BundleError as exc:
        raise PackagingError(str(exc)) from exc
    return rows


def same_predictions(
    model: Any, features: list[FeatureSpec], rows: list[list[Value]]
) -> Callable[[Any], None]:
    """A check that a copy of `model` (read back from its file) predicts exactly as it does on
    `rows`, through the API's own predictor; BundleError names the first row that differs."""
    expected = Predictor(model, features).predict(rows)

    def check(copy: Any) -> None:
        try:
            actual = Predictor(copy, features).predict(rows)
        except BerthError as exc:
            raise BundleError(f"the model read back cannot predict: {exc.detail}") from exc
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            if want != got:
                raise BundleError(
                    f"the model read back predicts {got} for row {index}, the original {want}"
                )

    return check


def try_compile(
    model: Any, features: list[FeatureSpec], rows: list[list[Value]]
) -> tuple[CompiledModel | None, str]:
    """The verified ONNX form of the model, or None and why it is served by scikit-learn."""
    try:
        compiled = compile_model(model, features, rows)
    except NotCompiled as exc:
        return None, f"not compiled, served by scikit-learn: {exc}"
    except ModuleNotFoundError as exc:
        # Refused rather than served by scikit-learn: the bundle would be slow for no reason.
        if (exc.name or "").split(".")[0] not in CONVERTERS:
            raise
        raise PackagingError(
            f"{exc.name} is not installed here: package in the packager image (berth-packager;"
            " make package, make train and seed-model run it), not the api image"
        ) from exc
    spec = compiled.spec
    return compiled, (
        f"compiled to ONNX ({spec.input_type} inputs), equal to scikit-learn on "
        f"{spec.verified_rows} rows (largest difference {spec.max_abs_diff:.2g}, "
        f"tolerance {spec.tolerance:g})"
    )


def package(
    model_path: Path,
    models_dir: Path,
    name: str,
    version: str,
    sample_path: Path | None = None,
    *,
    target: str | None = None,
    description: str = "",
    allow_version_mismatch: bool = False,
    compile_onnx: bool = True,
    trusted_types: frozenset[str] = frozenset(),
    report: Callable[[str], object] = print,
) -> BundleMetadata:
    model = load_model(model_path, allow_version_mismatch=allow_version_mismatch)
    sample = read_sample(sample_path) if sample_path is not None else None
    labels: list[Label] | None = None
    if target is not None:
        if sample is None:
            raise PackagingError("--target names a column of the sample: pass --sample too")
        sample, labels = split_target(model, sample, target)
    features = infer_features(model, sample)
    instances = sample_instances(features, sample)
    # every sample row is checked: each one is also a row of the training reference
    checked = check_serves(model, features, instances)
    rows = checked[:SAMPLE_ROWS_CHECKED]
    compiled, outcome = try_compile(model, features, rows) if compile_onnx else (None, "")
    if outcome:
        report(outcome)
    reference = sample_reference(model, features, checked if sample is not None else None, labels)
    if reference is None:
        report(
            "no training reference (no --sample): the drift views (feature_drift, "
            "prediction_drift) will have no rows for this model"
        )
    else:
        answers = "--target column" if reference.prediction.source == "labels" else "model"
        report(f"training reference: {reference.rows} sample rows, answers from the {answers}")
    try:
        return write_bundle(
            models_dir,
            model=model,
            name=name,
            version=version,
            features=features,
            description=description,
            example=instances[0],
            compiled=(compiled.graph, compiled.spec) if compiled is not None else None,
            reference=reference,
            trust=TrustPolicy(trusted_types=trusted_types),
            verify=same_predictions(model, features, rows),
            report=report,
        )
    except BundleError as exc:
        raise PackagingError(str(exc)) from exc


def sample_reference(
    model: Any,
    features: list[FeatureSpec],
    rows: list[list[Value]] | None,
    labels: list[Label] | None,
) -> ReferenceSpec | None:
    """The training reference of the sample's rows (checked as the API checks them), or None
    without a sample."""
    if rows is None:
        return None
    try:
        return training_reference(model, features, rows, labels)
    except BundleError as exc:
        raise PackagingError(f"no training reference from the sample: {exc}") from exc


def add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """What `package` and `repackage` both ask: which bundle, where, and what it may hold. The
    trusted types default to TRUSTED_TYPES: the api must trust the same ones to load the file."""

    def trusted_types(value: str) -> frozenset[str]:
        try:
            return parse_trusted_types(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument(
        "--models-dir", type=Path, default=Path(os.environ.get("MODELS_DIR", "/models"))
    )
    parser.add_argument("--allow-version-mismatch", action="store_true")
    parser.add_argument(
        "--trusted-types",
        type=trusted_types,
        default=os.environ.get("TRUSTED_TYPES", ""),
        metavar="NAMES",
        help="comma-separated types (beyond scikit-learn, numpy and scipy) the skops form may "
        "hold; the api loads it only with the same TRUSTED_TYPES (default: $TRUSTED_TYPES)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m berth_api.bundles.package",
        description="Package a fitted scikit-learn model saved with joblib as a Berth bundle.",
    )
    parser.add_argument("model", type=Path, help="the .joblib file")
    add_bundle_options(parser)
    parser.add_argument(
        "--sample",
        type=Path,
        help="CSV with a header row: names, types, a check, and the training reference for drift",
    )
    parser.add_argument(
        "--target",
        metavar="COLUMN",
        help="the sample's column of true labels (or values), left out of the features: the "
        "reference's answers; without it, the model's own predictions on the sample",
    )
    parser.add_argument("--description", default="")
    parser.add_argument(
        "--no-compile", action="store_true", help="do not try the ONNX form; serve scikit-learn"
    )
    args = parser.parse_args(argv)
    try:
        metadata = package(
            args.model,
            args.models_dir,
            args.name,
            args.version,
            args.sample,
            target=args.target,
            description=args.description,
            allow_version_mismatch=args.allow_version_mismatch,
            compile_onnx=not args.no_compile,
            trusted_types=args.trusted_types,
        )
    except PackagingError as exc:
        print(f"berth package: refused: {exc}", file=sys.stderr)
        return 1
    kinds = ", ".join(f"{f.name}:{f.type}" for f in metadata.features)
    print(
        f"packaged {metadata.name}/{metadata.version} ({metadata.estimator}, {metadata.task}) "
        f"into {args.models_dir}\n  features: {kinds}\n"
        f"  classes: {metadata.classes}\n  file: {metadata.model_file}, sha256 {metadata.sha256}\n"
        "restart the api to serve it: docker compose restart api"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
