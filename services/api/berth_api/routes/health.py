"""Liveness and readiness, kept apart: a live API whose Redis is down still serves predictions."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from berth_api.deps import State
from berth_api.schemas import Check, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "alive"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: State) -> JSONResponse:
    """200 when the default model is loaded and Redis answers; 503 naming the failing check."""
    model_ok, model_detail = state.registry.default_ready()
    checks = {"model": Check(ok=model_ok, detail=model_detail)}
    try:
        await asyncio.wait_for(state.redis.ping(), timeout=state.settings.redis_timeout_seconds)
        checks["redis"] = Check(ok=True, detail="reachable")
    except (RedisError, OSError, TimeoutError) as exc:
        checks["redis"] = Check(ok=False, detail=f"unreachable: {exc!r}")
    for key, reason in sorted(state.registry.failures.items()):
        if key != state.registry.default_model:
            checks[f"bundle:{key}"] = Check(ok=False, detail=reason)
    ready = checks["model"].ok and checks["redis"].ok
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
