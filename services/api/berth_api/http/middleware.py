"""Request ids: taken from `X-Request-ID` when the client sends a usable one, made otherwise.

Pure ASGI rather than BaseHTTPMiddleware: it runs on every request, and the id must be set in the
logging context before anything else logs.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth_api.errors import problem_response
from berth_common.logconfig import request_id_var
from berth_common.settings import AccessLog

HEADER = b"x-request-id"
# The id is stored, logged and put in URLs: letters, digits and a few separators only.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

access_logger = logging.getLogger("berth.access")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: AccessLog = "all") -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((v for k, v in scope["headers"] if k == HEADER), None)
        request_id = uuid.uuid4().hex
        valid = True
        if supplied is not None:
            text = supplied.decode("latin-1")
            valid = bool(REQUEST_ID_PATTERN.match(text))
            if valid:
                request_id = text
        token = request_id_var.set(request_id)
        header = (HEADER, request_id.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            if not valid:
                response = problem_response(
                    400,
                    "invalid-request-id",
                    "Invalid request id",
                    "X-Request-ID must be 1-128 characters: letters, digits, '.', '_', ':' or '-'",
                    path=scope["path"],
                )
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log == "all" or (self.access_log == "errors" and status >= 400):
                access_logger.info(
                    "%s %s %d %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                )
            request_id_var.reset(token)
