"""MLflow / SageMaker health check; `POST /invocations` is declared in `endpoints`."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from berth_api.http.deps import State
from berth_api.http.endpoints import MLFLOW_TAG

router = APIRouter(tags=[MLFLOW_TAG])


@router.get("/ping", response_class=PlainTextResponse)
async def ping(state: State) -> PlainTextResponse:
    """SageMaker's health check: 200 once the default model is loaded."""
    ok, _ = state.registry.default_ready()
    return PlainTextResponse("\n" if ok else "not ready\n", status_code=200 if ok else 503)
