"""Open Inference Protocol (KServe V2) REST endpoints; the translation is in protocols/v2.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from berth_api import __version__
from berth_api.http.auth import require_api_key
from berth_api.http.deps import RequestId, State
from berth_api.protocols import v2
from berth_api.serving.registry import ServedModel
from berth_api.serving.service import PredictionService

router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"])
models_router = APIRouter(
    prefix="/v2/models",
    tags=["open inference protocol (v2)"],
    dependencies=[Depends(require_api_key)],
)
PROBLEM: dict[str, object] = {"content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, object]] = {
    400: {"description": "Malformed request", **PROBLEM},
    404: {"description": "Unknown model or version", **PROBLEM},
    422: {"description": "Invalid tensors; `error` and `errors` say which", **PROBLEM},
    503: {"description": "Model not loaded", **PROBLEM},
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


async def infer_raw(
    service: PredictionService,
    served: ServedModel,
    body: bytes,
    json_length: str | None,
    request_id: str,
) -> v2.InferenceResponse:
    """A whole V2 inference from the raw body: the routes below and `fastpath` both use it."""
    request = v2.parse_request(body, json_length)
    metadata = served.bundle.metadata
    instances = v2.instances_from_request(metadata, request)
    prediction = await service.predict(served, instances, request_id)
    return v2.response_from_prediction(prediction, metadata, request)


async def _infer(
    served: ServedModel, request: Request, state: State, request_id: str
) -> v2.InferenceResponse:
    # The body is parsed here, not by FastAPI: Triton clients send binary tensors after the JSON.
    return await infer_raw(
        state.service,
        served,
        await request.body(),
        request.headers.get(v2.BINARY_HEADER),
        request_id,
    )


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}
        },
    }
}


@models_router.post(
    "/{name}/infer",
    response_model=v2.InferenceResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
)
async def infer(
    name: str, request: Request, state: State, request_id: RequestId
) -> v2.InferenceResponse:
    """V2 inference: one 2-D input [rows, features] or one input per feature."""
    return await _infer(state.registry.get(name), request, state, request_id)


@models_router.post(
    "/{name}/versions/{version}/infer",
    response_model=v2.InferenceResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
)
async def infer_version(
    name: str, version: str, request: Request, state: State, request_id: RequestId
) -> v2.InferenceResponse:
    """V2 inference against one version of the model."""
    return await _infer(state.registry.get(name, version), request, state, request_id)
