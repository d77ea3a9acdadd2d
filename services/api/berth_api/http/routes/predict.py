"""Prediction endpoints."""

from __future__ import annotations

from fastapi import APIRouter

from berth_api.http.deps import RequestId, State
from berth_api.schemas import DefaultPredictRequest, PredictRequest, PredictResponse

router = APIRouter(tags=["predictions"])
PROBLEM: dict[str, object] = {"content": {"application/problem+json": {}}}
ERRORS: dict[int | str, dict[str, object]] = {
    400: {"description": "Malformed request", **PROBLEM},
    404: {"description": "Unknown model", **PROBLEM},
    422: {"description": "Invalid input; `errors` names each bad field", **PROBLEM},
    503: {"description": "Model not loaded", **PROBLEM},
}


@router.post("/predict", response_model=PredictResponse, responses=ERRORS)
async def predict_default(
    body: DefaultPredictRequest, state: State, request_id: RequestId
) -> PredictResponse:
    """Predicts with the default model; also takes the tutorial body `{"features": [...]}`."""
    return await state.service.predict(state.registry.default(), body.rows(), request_id)


@router.post("/v1/models/{name}/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(
    name: str, body: PredictRequest, state: State, request_id: RequestId
) -> PredictResponse:
    """Predicts with the version of model `name` that the server resolves it to."""
    return await state.service.predict(state.registry.get(name), body.instances, request_id)


@router.post(
    "/v1/models/{name}/versions/{version}/predict", response_model=PredictResponse, responses=ERRORS
)
async def predict_version(
    name: str, version: str, body: PredictRequest, state: State, request_id: RequestId
) -> PredictResponse:
    """Predicts with one specific version of model `name`."""
    return await state.service.predict(
        state.registry.get(name, version), body.instances, request_id
    )
