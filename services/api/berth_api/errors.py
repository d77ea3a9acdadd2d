"""One error hierarchy, rendered everywhere as RFC 9457 problem details.

Every failure a client can cause is a `BerthError` carrying its HTTP status, so handlers never
guess; FastAPI's own validation and routing errors are converted to the same shape (see
`http/problems.py`). Bodies name the offending field but never echo the submitted value back.
Clients of the standard protocols read the error where their protocol puts it: those members are
added to the same document (RFC 9457 allows extensions), chosen by the door's `ErrorStyle`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from berth_common.logconfig import request_id_var

PROBLEM_JSON = "application/problem+json"


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


class InvalidRequestId(BerthError):
    status = 400
    code = "invalid-request-id"
    title = "Invalid request id"


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


class UnsupportedMediaType(BerthError):
    status = 415
    code = "unsupported-media-type"
    title = "Unsupported media type"


class RequestTimeout(BerthError):
    status = 408
    code = "request-timeout"
    title = "Request timeout"
    headers = {"Connection": "close"}  # noqa: RUF012 - never mutated


class IdempotencyConflict(BerthError):
    """The request id was already used for another request (or that one is still running)."""

    status = 409
    code = "request-id-conflict"
    title = "Request id already used"


class LedgerUnavailable(BerthError):
    status = 503
    code = "ledger-unavailable"
    title = "Ledger database unavailable"


class ErrorStyle(enum.Enum):
    """Where a door's clients look for the error, besides the problem members."""

    PROBLEM = "problem"  # Berth's own REST API: RFC 9457 only
    V2 = "v2"  # Open Inference Protocol: {"error": "..."}
    KSERVE_V1 = "kserve-v1"  # TensorFlow Serving / KServe V1: {"error": "..."}
    MLFLOW = "mlflow"  # MLflow scoring server: {"error_code": "...", "message": "..."}


# MLflow's error codes (its protos' ErrorCode), by status.
_MLFLOW_ERROR_CODES = {
    400: "MALFORMED_REQUEST",
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    408: "REQUEST_LIMIT_EXCEEDED",
    409: "RESOURCE_ALREADY_EXISTS",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    422: "INVALID_PARAMETER_VALUE",
    503: "TEMPORARILY_UNAVAILABLE",
}


def _protocol_members(style: ErrorStyle, status: int, detail: str) -> dict[str, str]:
    if style in (ErrorStyle.V2, ErrorStyle.KSERVE_V1):
        return {"error": detail}
    if style is ErrorStyle.MLFLOW:
        fallback = "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR"
        return {"error_code": _MLFLOW_ERROR_CODES.get(status, fallback), "message": detail}
    return {}


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: Sequence[FieldError] = (),
    style: ErrorStyle = ErrorStyle.PROBLEM,
) -> bytes:
    body: dict[str, Any] = {
        "type": f"urn:berth:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        **_protocol_members(style, status, detail),
    }
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors]
    # orjson refuses text that is not Unicode (a lone surrogate) rather than sending it; details
    # quote client input only through repr(), which escapes such characters
    return orjson.dumps(body)


def error_problem(exc: BerthError, style: ErrorStyle = ErrorStyle.PROBLEM) -> bytes:
    return problem_body(exc.status, exc.code, exc.title, exc.detail, exc.errors, style)


def invalid_body(raw: Sequence[Any]) -> BerthError:
    """The error for a body that failed validation, from pydantic's error list (no inputs)."""
    if any(error.get("type") == "json_invalid" for error in raw):
        return MalformedRequest("the request body is not valid JSON")
    errors = [FieldError(_field_name(tuple(e.get("loc", ()))), str(e.get("msg"))) for e in raw]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:3])
    return InvalidInput(detail, errors)


def _field_name(location: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in location if p != "body"]
    name = ""
    for part in parts:
        name += f"[{part}]" if part.isdigit() else (f".{part}" if name else part)
    return name or "body"
