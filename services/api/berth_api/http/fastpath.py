"""The prediction endpoints' common case, served in plain ASGI.

FastAPI's per-request machinery (dependency solving, body model validation, response model
serialisation, its router) cost twice as much CPU as everything Berth itself does for a
one-row prediction. This middleware answers the common case of the three REST prediction routes
directly: a JSON body that is exactly `{"features": row}` or `{"instances": [rows]}`; and Open
Inference Protocol V2 infer requests with JSON tensors, through the protocol module the V2 route
uses. It goes through the same `PredictionService`, the same API-key check and the same error
documents, and answers with the same response models, so a client cannot tell which path served
it.

Anything else (another content type, JSON it cannot read, extra keys, a wrong shape) is handed,
body and all, to the FastAPI route, which gives the canonical answer or error. The routes stay
the documented interface; this is only a shortcut to them.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from berth_api.errors import BerthError, problem_response
from berth_api.http.auth import check_api_key
from berth_api.http.deps import ApiState
from berth_api.http.limits import replaying
from berth_api.http.routes.v2 import infer_raw
from berth_api.protocols import v2
from berth_api.serving.registry import ServedModel
from berth_common.logconfig import request_id_var

_MODEL_ROUTE = re.compile(r"^/v1/models/([^/]+)/(?:versions/([^/]+)/)?predict$")
_V2_ROUTE = re.compile(r"^/v2/models/([^/]+)/(?:versions/([^/]+)/)?infer$")
_V2_BINARY_HEADER = v2.BINARY_HEADER.encode()
_JSON_HEADERS = [(b"content-type", b"application/json")]


class PredictFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        v2_match = _V2_ROUTE.match(path)
        if v2_match is not None:
            await self._v2(scope, receive, send, v2_match.group(1), v2_match.group(2))
            return
        if path == "/predict":
            name: str | None = None
            version: str | None = None
        else:
            match = _MODEL_ROUTE.match(path)
            if match is None:
                await self.app(scope, receive, send)
                return
            name, version = match.group(1), match.group(2)
        headers = dict(scope["headers"])
        if not headers.get(b"content-type", b"").startswith(b"application/json"):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        if not complete:  # the client went away: nobody to answer
            return
        instances = _instances(body, default_route=name is None)
        if instances is None:
            await self.app(scope, replaying(body, receive), send)
            return
        state: ApiState = scope["state"]["berth"]
        try:
            request_id = _authorized_request(state, headers)
            served: ServedModel = (
                state.registry.default() if name is None else state.registry.get(name, version)
            )
            answer = await state.service.predict(served, instances, request_id)
        except BerthError as exc:
            await _problem(exc, path, scope, receive, send)
            return
        await _answer(answer, send)

    async def _v2(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        """V2 infer with a JSON body, as `routes.v2` does it (binary tensors go to the route)."""
        headers = dict(scope["headers"])
        if _V2_BINARY_HEADER in headers or not headers.get(b"content-type", b"").startswith(
            b"application/json"
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        if not complete:
            return
        state: ApiState = scope["state"]["berth"]
        try:
            request_id = _authorized_request(state, headers)
            served = state.registry.get(name, version)
            answer = await infer_raw(state.service, served, body, None, request_id)
        except BerthError as exc:
            await _problem(exc, scope["path"], scope, receive, send)
            return
        await _answer(answer, send)


def _authorized_request(state: ApiState, headers: dict[bytes, bytes]) -> str:
    """Checks the API key as the routes' dependency does; the request's id."""
    check_api_key(state.settings.api_key_list, headers.get(b"authorization", b"").decode("latin-1"))
    request_id = request_id_var.get()
    assert request_id is not None, "RequestIdMiddleware sets it for every request"
    return request_id


async def _answer(answer: BaseModel, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": answer.model_dump_json().encode()})


async def _problem(exc: BerthError, path: str, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        exc.status, exc.code, exc.title, exc.detail, exc.errors, exc.headers, path
    )
    await response(scope, receive, send)


def _instances(body: bytes, *, default_route: bool) -> list[Any] | None:
    """The rows of a body in one of the two plain forms, or None to let the route decide."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or len(document) != 1:
        return None
    if "instances" in document:
        rows = document["instances"]
        if isinstance(rows, list) and all(isinstance(row, list | dict) for row in rows):
            return rows
        return None
    if default_route and "features" in document:
        row = document["features"]
        return [row] if isinstance(row, list | dict) else None
    return None


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body, and False if the client went away before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True
