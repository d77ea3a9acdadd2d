"""Model catalogue endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from berth_api.errors import ModelNotFound, ModelNotReady
from berth_api.http.deps import State
from berth_api.schemas import ModelDetails, ModelList, ModelSummary

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
    return ModelDetails.of(state.registry.get(name).bundle.metadata)


@router.get("/{name}/versions/{version}", response_model=ModelDetails)
async def get_model_version(name: str, version: str, state: State) -> ModelDetails:
    """The metadata of one version of a model."""
    return ModelDetails.of(state.registry.get(name, version).bundle.metadata)
