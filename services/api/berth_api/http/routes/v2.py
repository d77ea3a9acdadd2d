"""Open Inference Protocol (KServe V2) health and metadata; inference is declared in `endpoints`
and the translation is in protocols/v2.py."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from berth_api import __version__
from berth_api.http.deps import State
from berth_api.http.endpoints import V2_TAG
from berth_api.protocols import v2
from berth_api.serving.registry import ServedModel

router = APIRouter(prefix="/v2", tags=[V2_TAG])
models_router = APIRouter(prefix="/v2/models", tags=[V2_TAG])
ERRORS: dict[int | str, dict[str, object]] = {
    404: {"description": "Unknown model or version"},
    503: {"description": "Model not loaded"},
}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(state: State) -> JSONResponse:
    ok, _ = state.registry.default_ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("")
async def server_metadata() -> dict[str, object]:
    return {"name": "berth", "version": __version__, "extensions": []}


def _metadata(state: State, served: ServedModel) -> v2.ModelMetadata:
    versions = state.registry.versions(served.bundle.name)
    return v2.model_metadata(served.bundle.metadata, versions)


@models_router.get("/{name}", response_model=v2.ModelMetadata, responses=ERRORS)
async def model_metadata(name: str, state: State) -> v2.ModelMetadata:
    return _metadata(state, state.registry.get(name))


@models_router.get("/{name}/versions/{version}", response_model=v2.ModelMetadata, responses=ERRORS)
async def model_version_metadata(name: str, version: str, state: State) -> v2.ModelMetadata:
    return _metadata(state, state.registry.get(name, version))


@models_router.get("/{name}/ready", responses=ERRORS)
async def model_ready(name: str, state: State) -> dict[str, object]:
    served = state.registry.get(name)
    return {"name": served.bundle.name, "ready": True}


@models_router.get("/{name}/versions/{version}/ready", responses=ERRORS)
async def model_version_ready(name: str, version: str, state: State) -> dict[str, object]:
    served = state.registry.get(name, version)
    return {"name": served.bundle.name, "version": served.bundle.version, "ready": True}
