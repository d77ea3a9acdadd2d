"""Model bundles: `<models_dir>/<name>/<version>/` holding the model file and `metadata.json`.

The model file is `model.skops` (skops' format, which constructs only the types it is allowed to)
or, in bundles made before Berth wrote skops and for models skops cannot represent, the pickle
`model.joblib`. Whether a file may be loaded at all is decided by `trust.py`, from the operator's
settings; the sha256 in metadata.json only shows that the file is the one packaged with it, since
whoever can replace one can replace both. A bundle is loaded only with the scikit-learn version
it was made with unless mismatches are explicitly allowed: a model read under another version
can predict differently without any error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import joblib
import sklearn
import skops
import skops.io
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from berth_api.bundles.trust import (
    MODEL_FILES,
    SAFE_POLICY,
    ModelFormat,
    TrustPolicy,
    UntrustedModel,
    load_model_bytes,
)
from berth_common.settings import BUNDLE_NAME_PATTERN

METADATA_FILE = "metadata.json"
COMPILED_FILE = "model.onnx"
NAME_PATTERN = re.compile(rf"^{BUNDLE_NAME_PATTERN}$")

logger = logging.getLogger(__name__)

FeatureType = Literal["number", "integer", "string", "boolean"]
Label = str | int | float | bool


class BundleError(Exception):
    """A bundle that cannot be served; the message says why, for the log and /readyz."""


class FeatureSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: FeatureType = "number"


class CompiledSpec(BaseModel):
    """The bundle's compiled form: what it is, and how closely it was shown to match the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["onnx"] = "onnx"
    file: Literal["model.onnx"] = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # The input element type the graph takes: float32 where scikit-learn itself works in float32
    # (its trees), float64 otherwise.
    input_type: Literal["float32", "float64"]
    converter: str
    # Packaging compared both on these many rows: labels equal, numbers within the tolerance.
    verified_rows: int
    max_abs_diff: float
    tolerance: float


class ReferenceBinSpec(BaseModel):
    """One bin of a training distribution and the share of training rows in it: numbers v with
    lower <= v < upper (None is unbounded), or the values equal to `category`; a bin with
    neither is "anything else", the values the training rows never held."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lower: float | None = None
    upper: float | None = None
    category: Label | None = None
    expected: float = Field(ge=0.0, le=1.0)


class DistributionSpec(BaseModel):
    """Numeric: decile ranges covering every number; categorical: one bin per category seen in
    training, then "anything else" (expected 0)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["numeric", "categorical"]
    bins: list[ReferenceBinSpec] = Field(min_length=1)


class PredictionDistributionSpec(DistributionSpec):
    # whether the reference answers are the training labels (or targets) or the model's own
    # predictions on the reference rows, when the labels were not given
    source: Literal["labels", "predictions"]


class ReferenceSpec(BaseModel):
    """The training reference drift is measured against (reference.py computes it): each
    feature's distribution and the answers', over `rows` reference rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int = Field(ge=1)
    features: dict[str, DistributionSpec]
    prediction: PredictionDistributionSpec


class BundleMetadata(BaseModel):
    """What `metadata.json` holds; also what `GET /v1/models/{name}` returns."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str = Field(pattern=NAME_PATTERN.pattern)
    version: str = Field(pattern=NAME_PATTERN.pattern)
    created_at: AwareDatetime
    task: Literal["classification", "regression"]
    estimator: str
    features: list[FeatureSpec] = Field(min_length=1)
    classes: list[Label] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    python_version: str
    sklearn_version: str
    joblib_version: str
    # The model file's format; metadata.json files written before skops have no such field, and
    # hold pickles. Which format may be loaded is the operator's call (trust.py), not this file's.
    model_format: ModelFormat = "joblib"
    skops_version: str | None = None
    # sha256 of the model file: that it is the one packaged, not that it is safe to load
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    description: str = ""
    # One valid row, keyed by feature name: what /docs offers as the example request.
    example: dict[str, Label] | None = None
    compiled: CompiledSpec | None = None
    # Bundles packaged without a sample, and those made before references existed, have none:
    # the drift views leave them out.
    reference: ReferenceSpec | None = None

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]

    @property
    def model_file(self) -> str:
        return MODEL_FILES[self.model_format]

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ModelBundle:
    metadata: BundleMetadata
    model: Any
    path: Path
    # The ONNX graph, when the bundle carries one whose checksum matches its metadata.
    compiled: bytes | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(bundle_dir: Path) -> BundleMetadata:
    path = bundle_dir / METADATA_FILE
    try:
        return BundleMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(f"{path} is missing") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise BundleError(f"{path} is invalid: {problems}") from exc


def load_bundle(
    bundle_dir: Path,
    *,
    allow_version_mismatch: bool = False,
    trust: TrustPolicy = SAFE_POLICY,
) -> ModelBundle:
    """Verifies and loads one bundle; BundleError says exactly why one is refused."""
    metadata = read_metadata(bundle_dir)
    if (metadata.name, metadata.version) != (bundle_dir.parent.name, bundle_dir.name):
        raise BundleError(
            f"{bundle_dir} holds metadata for {metadata.key}; "
            "the directory must be <name>/<version>"
        )
    model_path = bundle_dir / metadata.model_file
    try:
        data = model_path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{model_path} is missing") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != metadata.sha256:
        raise BundleError(
            f"sha256 of {model_path} is {actual}, but metadata.json records {metadata.sha256}; "
            "refusing to load a model file that is not the one packaged"
        )
    if metadata.sklearn_version != sklearn.__version__:
        message = (
            f"{metadata.key} was made with scikit-learn "
            f"{metadata.sklearn_version}, this server runs {sklearn.__version__}"
        )
        if not allow_version_mismatch:
            raise BundleError(f"{message}; set ALLOW_VERSION_MISMATCH=true to load it anyway")
        logger.warning("%s; loading anyway because ALLOW_VERSION_MISMATCH is set", message)
    model = _load_model(data, metadata, model_path, actual, trust)
    return ModelBundle(
        metadata=metadata,
        model=model,
        path=bundle_dir,
        compiled=_read_compiled(bundle_dir, metadata),
    )


def _load_model(
    data: bytes, metadata: BundleMetadata, model_path: Path, sha256: str, trust: TrustPolicy
) -> Any:
    try:
        model = load_model_bytes(
            data, metadata.model_format, key=metadata.key, sha256=sha256, policy=trust
        )
    except UntrustedModel as exc:
        raise BundleError(str(exc)) from exc
    except Exception as exc:  # unpickling, or a trusted type's code, can raise anything
        raise BundleError(f"{model_path} could not be loaded: {exc!r}") from exc
    if not hasattr(model, "predict"):
        raise BundleError(f"{model_path} holds a {type(model).__name__}, which has no predict()")
    return model


def _read_compiled(bundle_dir: Path, metadata: BundleMetadata) -> bytes | None:
    """The compiled graph, or None (logged) when it is missing or not the one packaged: the
    bundle is then served by scikit-learn, which is slower but exact."""
    if metadata.compiled is None:
        return None
    path = bundle_dir / metadata.compiled.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        logger.error(
            "%s/%s: compiled model unreadable (%r); using scikit-learn",
            metadata.name,
            metadata.version,
            exc,
        )
        return None
    if hashlib.sha256(data).hexdigest() != metadata.compiled.sha256:
        logger.error(
            "%s/%s: sha256 of %s does not match metadata.json; using scikit-learn",
            metadata.name,
            metadata.version,
            path,
        )
        return None
    return data


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Numeric versions sort as numbers (2 < 10) and after any non-numeric ones."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def bundle_dirs(models_dir: Path) -> dict[str, list[Path]]:
    """Every `<name>/<version>` directory holding a metadata file, versions in ascending order."""
    found: dict[str, list[Path]] = {}
    if not models_dir.is_dir():
        return found
    for name_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if not NAME_PATTERN.match(name_dir.name):
            continue
        versions = [
            v
            for v in name_dir.iterdir()
            if v.is_dir() and NAME_PATTERN.match(v.name) and (v / METADATA_FILE).is_file()
        ]
        if versions:
            found[name_dir.name] = sorted(versions, key=lambda p: version_sort_key(p.name))
    return found


def write_bundle(
    models_dir: Path,
    *,
    model: Any,
    name: str,
    version: str,
    features: list[FeatureSpec],
    metrics: dict[str, float] | None = None,
    description: str = "",
    example: dict[str, Label] | None = None,
    compiled: tuple[bytes, CompiledSpec] | None = None,
    reference: ReferenceSpec | None = None,
    replace: bool = False,
    trust: TrustPolicy = SAFE_POLICY,
    verify: Callable[[Any], None] | None = None,
    pickle_fallback: bool = True,
    report: Callable[[str], object] = logger.warning,
) -> BundleMetadata:
    """Writes a bundle atomically: readers see the old bundle or the new one, never half of one.

    The model goes into skops' format if the file reads back under `trust` (the policy the api
    will load it with) and `verify`, given the model read back, accepts it (it raises BundleError
    if not). Otherwise it is pickled, unless `pickle_fallback` is off (BundleError, nothing
    written), and `report` says why and how the api can be told to load it.
    """
    for label, value in (("name", name), ("version", version)):
        if not NAME_PATTERN.match(value):
            raise BundleError(
                f"bundle {label} {value!r} must be letters, digits, '.', '_' or '-' "
                "(at most 100, starting with a letter or digit)"
            )
    target = models_dir / name / version
    if target.exists() and not replace:
        raise BundleError(f"{target} already exists; choose a new version")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=target.parent))
    try:
        model_format, sha256 = _write_model(
            staging,
            model,
            key=f"{name}/{version}",
            trust=trust,
            verify=verify,
            pickle_fallback=pickle_fallback,
            report=report,
        )
        if compiled is not None:
            (staging / COMPILED_FILE).write_bytes(compiled[0])
        classes = getattr(model, "classes_", None)
        metadata = BundleMetadata(
            name=name,
            version=version,
            created_at=datetime.now(UTC),
            task="classification" if classes is not None else "regression",
            estimator=_estimator_name(model),
            features=features,
            classes=[_plain(c) for c in classes] if classes is not None else None,
            metrics=metrics or {},
            python_version=platform.python_version(),
            sklearn_version=sklearn.__version__,
            joblib_version=joblib.__version__,
            model_format=model_format,
            skops_version=skops.__version__ if model_format == "skops" else None,
            sha256=sha256,
            description=description,
            example=example,
            compiled=compiled[1] if compiled is not None else None,
            reference=reference,
        )
        (staging / METADATA_FILE).write_text(
            json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n"
        )
        os.chmod(staging, 0o755)  # noqa: S103 - mkdtemp makes it 0700; servers only read it
        if target.exists():
            retired = target.with_name(f".{version}.retired")
            shutil.rmtree(retired, ignore_errors=True)
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def _write_model(
    staging: Path,
    model: Any,
    *,
    key: str,
    trust: TrustPolicy,
    verify: Callable[[Any], None] | None,
    pickle_fallback: bool,
    report: Callable[[str], object],
) -> tuple[ModelFormat, str]:
    """Writes the model file into `staging`; its format and sha256."""
    path = staging / MODEL_FILES["skops"]
    try:
        # compressed: a forest's hundreds of small arrays are each a member of the archive,
        # stored ten times larger than the pickle they replace
        skops.io.dump(model, path, compression=zipfile.ZIP_DEFLATED)
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        # read back exactly as the api will: a bundle that is written is a bundle that loads
        reloaded = load_model_bytes(data, "skops", key=key, sha256=sha256, policy=trust)
        if verify is not None:
            verify(reloaded)
        return "skops", sha256
    except (UntrustedModel, BundleError) as exc:
        reason = str(exc)
    except Exception as exc:  # skops raises what the object's own state handling raises
        reason = f"skops cannot represent it ({exc!r})"
    path.unlink(missing_ok=True)
    if not pickle_fallback:
        raise BundleError(f"{key} cannot be written in the safe skops format: {reason}")
    pickle = staging / MODEL_FILES["joblib"]
    joblib.dump(model, pickle)
    sha256 = file_sha256(pickle)
    report(
        f"{key}: written as a pickle ({pickle.name}), not in the safe skops format: {reason}\n"
        "The api loads a pickle only when its hash is pinned or ALLOW_PICKLE=true; to pin this "
        f"one, add this entry to PICKLE_SHA256 (comma-separated): {key}={sha256}"
    )
    return "joblib", sha256


def _estimator_name(model: Any) -> str:
    steps = getattr(model, "steps", None)
    if steps:
        inner = " -> ".join(type(step).__name__ for _, step in steps)
        return f"{type(model).__name__}({inner})"
    return type(model).__name__


def _plain(value: Any) -> Label:
    """numpy scalars to the JSON-able Python value they stand for."""
    item = value.item() if hasattr(value, "item") else value
    if not isinstance(item, str | int | float | bool):
        raise BundleError(f"class label {item!r} is not a string, number or boolean")
    return item
