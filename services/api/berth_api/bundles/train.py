"""`python -m berth_api.bundles.train`: trains the demo bundle iris/1 into the models directory.

Deterministic (fixed split and seed), so every `make up` on any machine serves the same model,
and its held-out accuracy goes into the bundle's metadata. The model is written in skops' format
only (never a pickle), and only if the copy read back predicts exactly as the one trained.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from berth_api.bundles.bundle import BundleMetadata, FeatureSpec, bundle_dirs, write_bundle
from berth_api.bundles.package import PackagingError, same_predictions, try_compile
from berth_api.bundles.reference import training_reference

DEMO_NAME = "iris"
DEMO_VERSION = "1"
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def train_demo(models_dir: Path, *, replace: bool = False) -> BundleMetadata:
    data = load_iris()
    labels = np.asarray(data.target_names)[data.target]
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, labels, test_size=0.25, random_state=42, stratify=labels
    )
    model = RandomForestClassifier(n_estimators=100, random_state=42)
    model.fit(x_train, y_train)
    accuracy = float(accuracy_score(y_test, model.predict(x_test)))
    features = [FeatureSpec(name=name, type="number") for name in IRIS_FEATURES]
    rows = data.data.tolist()
    # checked against scikit-learn on every iris row plus generated ones
    compiled, outcome = try_compile(model, features, rows)
    print(outcome)
    # what drift is measured against: the rows the forest learnt from, and their labels
    reference = training_reference(model, features, x_train.tolist(), labels=y_train.tolist())
    return write_bundle(
        models_dir,
        model=model,
        name=DEMO_NAME,
        version=DEMO_VERSION,
        features=features,
        metrics={
            "accuracy": accuracy,
            "train_rows": float(len(y_train)),
            "test_rows": float(len(y_test)),
        },
        description="Demo: RandomForestClassifier(n_estimators=100) on scikit-learn's iris data.",
        example=dict(zip(IRIS_FEATURES, [5.1, 3.5, 1.4, 0.2], strict=True)),
        compiled=(compiled.graph, compiled.spec) if compiled is not None else None,
        reference=reference,
        replace=replace,
        verify=same_predictions(model, features, rows),
        pickle_fallback=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--models-dir", type=Path, default=Path(os.environ.get("MODELS_DIR", "/models"))
    )
    parser.add_argument(
        "--if-missing", action="store_true", help="do nothing if any bundle is already present"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing iris/1")
    args = parser.parse_args(argv)
    present = bundle_dirs(args.models_dir)
    if args.if_missing and present:
        names = ", ".join(f"{n}/{p[-1].name}" for n, p in present.items())
        print(f"models directory already holds bundles ({names}); not training the demo")
        return 0
    if (args.models_dir / DEMO_NAME / DEMO_VERSION).exists() and not args.force:
        print(f"{DEMO_NAME}/{DEMO_VERSION} already exists; use --force to retrain it")
        return 0
    try:
        metadata = train_demo(args.models_dir, replace=args.force)
    except PackagingError as exc:
        print(f"berth train: refused: {exc}", file=sys.stderr)
        return 1
    print(
        f"trained {metadata.name}/{metadata.version} into {args.models_dir}: "
        f"held-out accuracy {metadata.metrics['accuracy']:.3f}, {metadata.model_file} "
        f"sha256 {metadata.sha256[:12]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
