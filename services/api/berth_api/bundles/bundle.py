"""Model bundles: `<models_dir>/<name>/<version>/` holding `model.joblib` and `metadata.json`.

Loading a joblib file runs code, so a bundle is loaded only when the file's sha256 matches the one
its metadata records, and only with the scikit-learn version it was made with unless mismatches
are explicitly allowed: a model unpickled under another version can predict differently without
any error.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import joblib
import sklearn
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
COMPILED_FILE = "model.onnx"
# Names and versions become path segments, Redis key parts and SQL values: keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

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
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    description: str = ""
    # One valid row, keyed by feature name: what /docs offers as the example request.
    example: dict[str, Label] | None = None
    compiled: CompiledSpec | None = None

    @property
    def feature_names(self) -> list[str]:
        return [feature.name for feature in self.features]


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


def load_bundle(bundle_dir: Path, *, allow_version_mismatch: bool = False) -> ModelBundle:
    """Verifies and loads one bundle; BundleError says exactly why one is refused."""
    metadata = read_metadata(bundle_dir)
    if (metadata.name, metadata.version) != (bundle_dir.parent.name, bundle_dir.name):
        raise BundleError(
            f"{bundle_dir} holds metadata for {metadata.name}/{metadata.version}; "
            "the directory must be <name>/<version>"
        )
    model_path = bundle_dir / MODEL_FILE
    if not model_path.is_file():
        raise BundleError(f"{model_path} is missing")
    actual = file_sha256(model_path)
    if actual != metadata.sha256:
        raise BundleError(
            f"sha256 of {model_path} is {actual}, but metadata.json records {metadata.sha256}; "
            "refusing to load a model file that is not the one packaged"
        )
    if metadata.sklearn_version != sklearn.__version__:
        message = (
            f"{metadata.name}/{metadata.version} was made with scikit-learn "
            f"{metadata.sklearn_version}, this server runs {sklearn.__version__}"
        )
        if not allow_version_mismatch:
            raise BundleError(f"{message}; set ALLOW_VERSION_MISMATCH=true to load it anyway")
        logger.warning("%s; loading anyway because ALLOW_VERSION_MISMATCH is set", message)
    try:
        model = joblib.load(model_path)
    except Exception as exc:  # unpickling can raise anything the pickled code raises
        raise BundleError(f"{model_path} could not be loaded: {exc!r}") from exc
    if not hasattr(model, "predict"):
        raise BundleError(f"{model_path} holds a {type(model).__name__}, which has no predict()")
    return ModelBundle(
        metadata=metadata,
        model=model,
        path=bundle_dir,
        compiled=_read_compiled(bundle_dir, metadata),
    )


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
    replace: bool = False,
) -> BundleMetadata:
    """Writes a bundle atomically: readers see the old bundle or the new one, never half of one."""
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
        joblib.dump(model, staging / MODEL_FILE)
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
            sha256=file_sha256(staging / MODEL_FILE),
            description=description,
            example=example,
            compiled=compiled[1] if compiled is not None else None,
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
