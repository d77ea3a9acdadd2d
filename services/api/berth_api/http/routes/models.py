"""Model catalogue endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from berth_api.errors import ModelNotFound, ModelNotReady
from berth_api.http.deps import State
from berth_api.schemas import ModelDetails, ModelList, ModelSummary, Serving
from berth_api.serving.registry import ServedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(state: State) -> ModelList:
    """Every served model, at the version its name resolves to."""
    registry = state.registry
    summaries = []
    for name in sorted(registry.resolved):
        try:
            metadata = registry.get(name).bundle.metadata
        except (ModelNotFound, ModelNotReady):  # listed with its reason in /readyz
            continue
        summaries.append(
            ModelSummary(
                name=name,
                version=metadata.version,
                versions=registry.versions(name),
                task=metadata.task,
                estimator=metadata.estimator,
                features=metadata.feature_names,
                classes=metadata.classes,
                default=name == registry.default_model,
            )
        )
    return ModelList(models=summaries)


@router.get("/{name}", response_model=ModelDetails)
async def get_model(name: str, state: State) -> ModelDetails:
    """The metadata of the version `name` resolves to: features, classes, metrics, versions.
    `ready` is what TensorFlow Serving / KServe V1 clients ask this path for."""
    return _details(state.registry.get(name))


@router.get("/{name}/versions/{version}", response_model=ModelDetails)
async def get_model_version(name: str, version: str, state: State) -> ModelDetails:
    """The metadata of one version of a model."""
    return _details(state.registry.get(name, version))


def _details(served: ServedModel) -> ModelDetails:
    policy = served.cache_policy
    serving = Serving(
        engine=served.batcher.engine,
        cache=policy.cache,
        cache_reason=policy.reason,
        row_us=_microseconds(policy.alone_seconds),
        batched_row_us=_microseconds(policy.batched_seconds),
    )
    return ModelDetails.of(served.bundle.metadata, serving)


def _microseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)
