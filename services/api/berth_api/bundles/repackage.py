"""`python -m berth_api.bundles.repackage --name N --version V`: a pickle bundle as skops.

A bundle made before Berth wrote skops holds `model.joblib`, which the API refuses unless it is
pinned or ALLOW_PICKLE is set. This reads it with joblib, which runs its code: running the command
is the operator's statement that the file (the one its metadata.json names) is theirs. It then
rewrites the bundle in place, atomically, with the model in skops' format and every other part
kept (features, metrics, description, example, the compiled ONNX form and its spec, the training
reference), but only if the model read back from the skops file predicts exactly as the pickle
did on the bundle's example row, rows of zeros and of ones, and (for all-numeric models) rows
generated around them. The model file's sha256 changes: the API, at its next start, replaces the
version's rows in model_versions and reference_bins and logs that it did.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sklearn

from berth_api.bundles.bundle import (
    BundleError,
    BundleMetadata,
    FeatureSpec,
    Label,
    load_bundle,
    read_metadata,
    write_bundle,
)
from berth_api.bundles.package import (
    PackagingError,
    add_bundle_options,
    check_serves,
    same_predictions,
)
from berth_api.bundles.trust import TrustPolicy
from berth_api.serving.compiled import verification_rows
from berth_api.serving.features import Value

# Rows generated around the example for the comparison; the pickle and its skops copy must agree
# on every one. Fewer than packaging compiles with: equality here is exact, not within a tolerance.
GENERATED_ROWS = 500


def repackage(
    models_dir: Path,
    name: str,
    version: str,
    *,
    trusted_types: frozenset[str] = frozenset(),
    allow_version_mismatch: bool = False,
    report: Callable[[str], object] = print,
) -> BundleMetadata:
    """The bundle's new metadata; PackagingError (the bundle untouched) when it cannot be done."""
    bundle_dir = models_dir / name / version
    try:
        metadata = read_metadata(bundle_dir)
        if metadata.model_format == "skops":
            report(f"{metadata.key} is already in skops format; nothing to do")
            return metadata
        if metadata.sklearn_version != sklearn.__version__ and not allow_version_mismatch:
            raise PackagingError(
                f"{metadata.key} was made with scikit-learn {metadata.sklearn_version}, this "
                f"image runs {sklearn.__version__}; pass --allow-version-mismatch to repackage "
                "it as this version reads it"
            )
        # the operator's deliberate act: this pickle, the one its metadata records, is trusted
        bundle = load_bundle(
            bundle_dir,
            allow_version_mismatch=allow_version_mismatch,
            trust=TrustPolicy(pickle_pins={metadata.key: metadata.sha256}),
        )
    except BundleError as exc:
        raise PackagingError(str(exc)) from exc
    features = metadata.features
    rows = comparison_rows(bundle.model, features, metadata.example)
    if metadata.compiled is not None and bundle.compiled is None:
        report(f"{metadata.key}: its compiled form is unreadable or altered; dropping it")
    try:
        written = write_bundle(
            models_dir,
            model=bundle.model,
            name=name,
            version=version,
            features=features,
            metrics=metadata.metrics,
            description=metadata.description,
            example=metadata.example,
            compiled=(
                (bundle.compiled, metadata.compiled)
                if bundle.compiled is not None and metadata.compiled is not None
                else None
            ),
            reference=metadata.reference,
            replace=True,
            trust=TrustPolicy(trusted_types=trusted_types),
            verify=same_predictions(bundle.model, features, rows),
            pickle_fallback=False,
        )
    except BundleError as exc:
        raise PackagingError(str(exc)) from exc
    report(
        f"repackaged {written.key} as {written.model_file}, sha256 {written.sha256}; equal to "
        f"the pickle on {len(rows)} rows\nremove any PICKLE_SHA256 entry for {written.key}, "
        "then restart the api: docker compose restart api"
    )
    return written


def comparison_rows(
    model: Any, features: list[FeatureSpec], example: dict[str, Label] | None
) -> list[list[Value]]:
    """The example row, a row of zeros and one of ones (their strings taken from the example),
    checked through the API's validation; for all-numeric models, rows generated around them."""
    instances = [_filled(features, example, fill) for fill in (0, 1)]
    if example is not None:
        instances.insert(0, dict(example))
    rows = check_serves(model, features, instances)
    if all(feature.type in ("number", "integer") for feature in features):
        rows = verification_rows(rows, features, count=GENERATED_ROWS)
    return rows


def _filled(
    features: list[FeatureSpec], example: dict[str, Label] | None, fill: int
) -> dict[str, Any]:
    values = {"number": float(fill), "integer": fill, "boolean": bool(fill)}
    return {
        f.name: values[f.type] if f.type in values else (example or {}).get(f.name, "")
        for f in features
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m berth_api.bundles.repackage",
        description="Rewrite a pickle (model.joblib) bundle in place in skops' safe format.",
    )
    add_bundle_options(parser)
    args = parser.parse_args(argv)
    try:
        repackage(
            args.models_dir,
            args.name,
            args.version,
            trusted_types=args.trusted_types,
            allow_version_mismatch=args.allow_version_mismatch,
        )
    except PackagingError as exc:
        print(f"berth repackage: refused, the bundle is unchanged: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
