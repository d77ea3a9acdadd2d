"""Errors as problem documents, from wherever they are raised: a middleware, the prediction
router, or a FastAPI route (whose handlers are installed here)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from berth_api.errors import (
    PROBLEM_JSON,
    BerthError,
    ErrorStyle,
    error_problem,
    invalid_body,
    problem_body,
)
from berth_api.http.endpoints import error_style

logger = logging.getLogger(__name__)


def media_type(style: ErrorStyle) -> str:
    # The standard protocols' clients read an error body only when it says application/json
    # (KServe's client checks the type exactly); the document is the same problem either way.
    return PROBLEM_JSON if style is ErrorStyle.PROBLEM else "application/json"


async def send_problem(
    send: Send,
    exc: BerthError,
    style: ErrorStyle,
    extra_headers: Mapping[str, str] | None = None,
) -> None:
    await send_raw_problem(
        send,
        exc.status,
        error_problem(exc, style),
        style,
        {
            **(exc.headers or {}),
            **(extra_headers or {}),
        },
    )


async def send_raw_problem(
    send: Send, status: int, body: bytes, style: ErrorStyle, headers: Mapping[str, str]
) -> None:
    raw_headers = [
        (b"content-type", media_type(style).encode()),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def problem_response(exc: BerthError, path: str) -> Response:
    style = error_style(path)
    return Response(
        error_problem(exc, style),
        status_code=exc.status,
        media_type=media_type(style),
        headers=exc.headers,
    )


async def _berth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BerthError)
    return problem_response(exc, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(invalid_body(exc.errors()), request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    title = str(exc.detail) if isinstance(exc.detail, str) else "HTTP error"
    detail = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(
        exc.status_code, title
    )
    style = error_style(request.url.path)
    return Response(
        problem_body(exc.status_code, code, title, detail, style=style),
        status_code=exc.status_code,
        media_type=media_type(style),
        headers=dict(exc.headers) if exc.headers else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Unexpected exceptions are not handled here but by the request-id middleware, which
    logs each once with its request id and answers 500 with that id."""
    app.add_exception_handler(BerthError, _berth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
