"""Liveness and readiness, kept apart: a live API whose Redis is down still serves predictions."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from berth_api.http.deps import State
from berth_api.ledger.health import ledger_checks
from berth_api.schemas import Check, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "alive"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: State) -> JSONResponse:
    """200 `ready`; 200 `degraded` when part of the ledger needs attention (predictions are still
    served and recorded); 503 `not ready` when the default model cannot serve."""
    model_ok, model_detail = state.registry.default_ready()
    checks = {"model": Check(ok=model_ok, detail=model_detail)}
    checks.update(
        await ledger_checks(state.settings, state.redis, state.engine, state.gateway.spool)
    )
    for key, reason in sorted(state.registry.failures.items()):
        if key != state.registry.default_model:
            checks[f"bundle:{key}"] = Check(ok=False, detail=reason)
    if not model_ok:
        status, code = "not ready", 503
    elif all(check.ok for check in checks.values()):
        status, code = "ready", 200
    else:
        status, code = "degraded", 200
    body = Readiness(status=status, checks=checks)
    return JSONResponse(body.model_dump(), status_code=code)
