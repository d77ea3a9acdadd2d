"""The bundles this API process serves, loaded once at start-up from the models directory.

A bundle that fails to load does not stop the others: its reason is kept for `/readyz` and the
log, and requests for it get a 503 that says so. That includes a bundle the operator's trust
policy (TRUSTED_TYPES, ALLOW_PICKLE, PICKLE_SHA256) does not allow to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from berth_api.bundles.bundle import (
    BundleError,
    ModelBundle,
    bundle_dirs,
    load_bundle,
    version_sort_key,
)
from berth_api.bundles.trust import TrustPolicy
from berth_api.errors import ModelNotFound, ModelNotReady
from berth_api.monitoring import ApiMetrics
from berth_api.serving.batching import ModelBatcher
from berth_api.serving.cache_policy import CachePolicy, decide
from berth_api.serving.compiled import CompiledPredictor, NotCompiled
from berth_api.serving.predictor import Predictor, Predicts
from berth_api.serving.timing import time_model
from berth_common.settings import ApiSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    bundle: ModelBundle
    batcher: ModelBatcher
    # whether its answers are cached (CACHE_ENABLED, and the model's time per row)
    cache_policy: CachePolicy

    @property
    def predictor(self) -> Predicts:
        return self.batcher.predictor


def choose_predictor(bundle: ModelBundle, settings: ApiSettings) -> Predicts:
    """The bundle's verified ONNX graph when it has one and COMPILED_MODELS allows, else
    scikit-learn."""
    if settings.compiled_models and bundle.compiled is not None:
        try:
            return CompiledPredictor.for_bundle(bundle, threads=settings.model_threads)
        except NotCompiled as exc:
            logger.error(
                "%s/%s: %s; serving it with scikit-learn", bundle.name, bundle.version, exc
            )
    return Predictor.for_bundle(bundle)


@dataclass
class ModelRegistry:
    models_dir: Path
    default_model: str
    models: dict[tuple[str, str], ServedModel] = field(default_factory=dict)
    # name -> the version `/v1/models/{name}/predict` serves
    resolved: dict[str, str] = field(default_factory=dict)
    # "name/version" (or "name") -> why it is not served
    failures: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: ApiSettings, metrics: ApiMetrics) -> ModelRegistry:
        registry = cls(settings.models_dir, settings.default_model)
        trust = TrustPolicy.from_settings(settings)
        for name, versions in bundle_dirs(settings.models_dir).items():
            for bundle_dir in versions:
                key = f"{name}/{bundle_dir.name}"
                try:
                    bundle = load_bundle(
                        bundle_dir,
                        allow_version_mismatch=settings.allow_version_mismatch,
                        trust=trust,
                    )
                except BundleError as exc:
                    logger.error("not serving bundle %s: %s", key, exc)
                    registry.failures[key] = str(exc)
                    continue
                predictor = choose_predictor(bundle, settings)
                timing = time_model(predictor, bundle.metadata, batch_rows=settings.batch_max_size)
                cache_policy = decide(
                    timing,
                    enabled=settings.cache_enabled,
                    min_row_seconds=settings.cache_min_row_us / 1e6,
                )
                batcher = ModelBatcher(
                    predictor,
                    name=name,
                    version=bundle.version,
                    metrics=metrics,
                    max_size=settings.batch_max_size,
                    max_wait_seconds=settings.batch_max_wait_ms / 1000.0,
                    timing=timing,
                )
                registry.models[(name, bundle.version)] = ServedModel(bundle, batcher, cache_policy)
                logger.info(
                    "loaded bundle %s from %s (%s); its answers %s cached: %s",
                    key,
                    bundle_dir,
                    batcher.engine,
                    "are" if cache_policy.cache else "are not",
                    cache_policy.reason,
                )
            registry.resolved[name] = versions[-1].name
        registry.resolved.update(settings.version_pins)
        default = settings.default_model
        if default not in registry.resolved:
            reason = f"default model {default!r} has no bundle in {settings.models_dir}"
            logger.error("%s", reason)
            registry.failures[default] = reason
        return registry

    def get(self, name: str, version: str | None = None) -> ServedModel:
        if version is None:
            version = self.resolved.get(name)
            if version is None:
                raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
        served = self.models.get((name, version))
        if served is not None:
            return served
        failure = self.failures.get(f"{name}/{version}")
        if failure is not None:
            raise ModelNotReady(f"model {name}/{version} is not served: {failure}")
        raise ModelNotFound(f"no version {version!r} of model {name!r}")

    def versions(self, name: str) -> list[str]:
        """The loaded versions of a model, oldest first (2 before 10)."""
        return sorted((v for n, v in self.models if n == name), key=version_sort_key)

    def default(self) -> ServedModel:
        return self.get(self.default_model)

    def close(self) -> None:
        for served in self.models.values():
            served.batcher.close()

    def default_ready(self) -> tuple[bool, str]:
        try:
            served = self.default()
        except (ModelNotFound, ModelNotReady) as exc:
            return False, self.failures.get(self.default_model, exc.detail)
        return True, f"{served.bundle.name}/{served.bundle.version} loaded"
