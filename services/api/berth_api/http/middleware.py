"""The outermost layer: request ids, the access log, and the answer to anything unexpected.

The request id is taken from `X-Request-ID` when the client sends a usable one (it is then the
request's idempotency key) and made otherwise; it is set in the logging context before anything
else logs, and every response carries it. An exception nothing else handled is logged here, once,
with that id, and answered with a 500 problem document that carries it too.

Pure ASGI rather than BaseHTTPMiddleware: it runs on every request.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth_api.errors import BerthError, InvalidRequestId, problem_body
from berth_api.http.context import ROUTE_KEY, SCOPE_KEY, RequestContext
from berth_api.http.endpoints import error_style, prediction_endpoint
from berth_api.http.problems import send_problem, send_raw_problem
from berth_api.monitoring import UNMATCHED_ROUTE, ApiMetrics
from berth_common.logconfig import log_fields_var, request_id_var
from berth_common.settings import AccessLog

HEADER = b"x-request-id"
# The id is stored, logged and put in URLs: letters, digits and a few separators only.
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

access_logger = logging.getLogger("berth.access")
logger = logging.getLogger(__name__)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, access_log: AccessLog = "all") -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = [v for k, v in scope["headers"] if k == HEADER]
        # 128 random bits as 32 hex digits, like uuid4().hex at a fifth of its cost
        request_id = os.urandom(16).hex()
        problem: BerthError | None = None
        if len(supplied) > 1:
            problem = InvalidRequestId("send at most one X-Request-ID header")
        elif supplied:
            text = supplied[0].decode("latin-1")
            if REQUEST_ID_PATTERN.match(text):
                request_id = text
            else:
                problem = InvalidRequestId(
                    "X-Request-ID must be 1-128 characters: letters, digits, '.', '_', ':' or "
                    "'-', starting with a letter or digit"
                )
        scope[SCOPE_KEY] = RequestContext(request_id, supplied=bool(supplied) and not problem)
        token = request_id_var.set(request_id)
        fields_token = log_fields_var.set(None)
        header = (HEADER, request_id.encode())
        status = 0
        started = time.perf_counter()
        self.metrics.in_progress.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            if problem is not None:
                await send_problem(send_with_id, problem, error_style(scope["path"]))
            else:
                await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            pass  # nobody left to answer
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status == 0:  # nothing sent yet: the client gets a 500 that names the request
                body = problem_body(
                    500,
                    "internal-error",
                    "Internal server error",
                    "an unexpected error occurred; the log has it under this request id",
                    style=error_style(scope["path"]),
                )
                await send_raw_problem(
                    send_with_id, 500, body, error_style(scope["path"]), {"Connection": "close"}
                )
            # else the response is cut short; re-raising would only log the error a second time
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.in_progress.dec()
            self.metrics.record_request(route_template(scope), scope["method"], status, elapsed)
            if self.access_log == "all" or (self.access_log == "errors" and status >= 400):
                # "-": the client went away before any answer
                access_logger.info(
                    "%s %s %s %.1fms",
                    scope["method"],
                    scope["path"],
                    status or "-",
                    elapsed * 1000,
                )
            request_id_var.reset(token)
            log_fields_var.reset(fields_token)


def route_template(scope: Scope) -> str:
    """The route a request matched, as declared: a label value of bounded cardinality."""
    template = scope.get(ROUTE_KEY)  # set by the prediction router
    if template is not None:
        return str(template)
    path = getattr(scope.get("route"), "path", None)  # set by FastAPI's router
    if isinstance(path, str):
        return path
    found = prediction_endpoint(scope["path"])  # refused before routing: a 401, a 413
    return found[0].path if found is not None else UNMATCHED_ROUTE
