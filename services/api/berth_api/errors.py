"""One error hierarchy, rendered everywhere as RFC 9457 problem details.

Every failure a client can cause is a `BerthError` carrying its HTTP status, so handlers never
guess; FastAPI's own validation and routing errors are converted to the same shape. Bodies name
the offending field but never echo the submitted value back.
"""

from __future__ import annotations

import logging
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
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:berth:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_name(location: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in location if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"


async def _berth_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BerthError)
    return problem_response(
        exc.status, exc.code, exc.title, exc.detail, exc.errors, headers=exc.headers
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    raw = exc.errors()
    if any(error.get("type") == "json_invalid" for error in raw):
        return problem_response(
            400, MalformedRequest.code, MalformedRequest.title, "the request body is not valid JSON"
        )
    errors = [FieldError(_field_name(tuple(e.get("loc", ()))), str(e.get("msg"))) for e in raw]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:3])
    return problem_response(422, InvalidInput.code, InvalidInput.title, detail, errors)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
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
    return problem_response(500, BerthError.code, BerthError.title, "an unexpected error occurred")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(BerthError, _berth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
