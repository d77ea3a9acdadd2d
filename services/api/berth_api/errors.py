"""One error hierarchy, rendered everywhere as RFC 9457 problem details.

Every failure a client can cause is a `BerthError` carrying its HTTP status, so handlers never
guess; FastAPI's own validation and routing errors are converted to the same shape. Bodies name
the offending field but never echo the submitted value back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from berth_common.logconfig import request_id_var

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class BerthError(Exception):
    status: int = 500
    code: str = "internal-error"
    title: str = "Internal server error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class Unauthorized(BerthError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"
    headers = {"WWW-Authenticate": 'Bearer realm="berth"'}  # noqa: RUF012 - never mutated


class BodyTooLarge(BerthError):
    status = 413
    code = "body-too-large"
    title = "Request body too large"


class InvalidInput(BerthError):
    status = 422
    code = "invalid-input"
    title = "Invalid input"


class UnpredictableInput(BerthError):
    """The model answered with NaN or infinity, which JSON and the ledger cannot hold."""

    status = 422
    code = "unpredictable-input"
    title = "The model cannot predict this input"


class MalformedRequest(BerthError):
    status = 400
    code = "malformed-request"
    title = "Malformed request"


class ModelNotFound(BerthError):
    status = 404
    code = "model-not-found"
    title = "Model not found"


class ModelNotReady(BerthError):
    status = 503
    code = "model-not-ready"
    title = "Model not ready"


class PredictionNotFound(BerthError):
    status = 404
    code = "prediction-not-found"
    title = "Prediction not found"


class LedgerUnavailable(BerthError):
    status = 503
    code = "ledger-unavailable"
    title = "Ledger database unavailable"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:berth:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        **_protocol_members(path, status, detail),
    }
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


# Clients of the standard protocols read the error where their protocol puts it; these members
# are added to the problem document (RFC 9457 allows extensions), so one shape serves all.
_MLFLOW_ERROR_CODES = {
    400: "MALFORMED_REQUEST",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
}


def _protocol_members(path: str, status: int, detail: str) -> dict[str, str]:
    if path.startswith("/v2/"):
        return {"error": detail}
    if path == "/invocations":
        return {"error_code": _MLFLOW_ERROR_CODES.get(status, "INTERNAL_ERROR"), "message": detail}
    return {}


def _field_name(location: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in location if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


async def _berth_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BerthError)
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, exc.errors, exc.headers, request.url.path
    )


def invalid_body(raw: Sequence[Any]) -> BerthError:
    """The error for a body that failed validation, from pydantic's error list (no inputs)."""
    if any(error.get("type") == "json_invalid" for error in raw):
        return MalformedRequest("the request body is not valid JSON")
    errors = [FieldError(_field_name(tuple(e.get("loc", ()))), str(e.get("msg"))) for e in raw]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:3])
    return InvalidInput(detail, errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _berth_error(request, invalid_body(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    title = str(exc.detail) if isinstance(exc.detail, str) else "HTTP error"
    detail = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(
        exc.status_code, title
    )
    return problem_response(
        exc.status_code, code, title, detail, headers=dict(exc.headers) if exc.headers else None
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        500,
        BerthError.code,
        BerthError.title,
        "an unexpected error occurred",
        path=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BerthError, _berth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
