"""Liveness and readiness, kept apart: a live API whose Redis is down still serves predictions.

Both answer without a key. With API_KEYS set, a caller without a key learns the status and the
names of the checks, not their details (file paths, the database host, worker names).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from berth_api.http.deps import Context, State
from berth_api.ledger.health import ledger_checks
from berth_api.schemas import Check, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "alive"}


@router.get("/", include_in_schema=False)
async def root() -> dict[str, str]:
    """TensorFlow Serving / KServe V1 clients ask the root whether the server is alive."""
    return {"status": "alive"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: State, context: Context) -> JSONResponse:
    """200 `ready`; 200 `degraded` when part of the ledger needs attention (predictions are still
    served and recorded); 503 `not ready` when the default model cannot serve."""
    model_ok, model_detail = state.registry.default_ready()
    checks = {"model": Check(ok=model_ok, detail=model_detail)}
    checks.update(
        await ledger_checks(state.settings, state.redis, state.engine, state.gateway.spool)
    )
    others = {k: v for k, v in state.registry.failures.items() if k != state.registry.default_model}
    if others:
        checks["bundles"] = Check(
            ok=False, detail="; ".join(f"{key}: {reason}" for key, reason in sorted(others.items()))
        )
    if not model_ok:
        status, code = "not ready", 503
    elif all(check.ok for check in checks.values()):
        status, code = "ready", 200
    else:
        status, code = "degraded", 200
    if not context.authorized:
        checks = {name: Check(ok=check.ok) for name, check in checks.items()}
    body = Readiness(status=status, checks=checks)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=code)
