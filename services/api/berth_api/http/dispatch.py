"""The prediction endpoints, served in plain ASGI from their declaration in `endpoints`.

FastAPI's per-request machinery (router, dependency solving, body and response models) cost twice
as much CPU as everything Berth itself does for a one-row prediction, so the prediction endpoints
do not go through it: this router matches the declared paths, lets the endpoint's door read the
body, calls `PredictionService` and sends the door's answer, with its length. Every other request
goes on to FastAPI. FastAPI still documents the prediction endpoints: `install_documented_routes`
registers each declared endpoint with a route that calls the same `answer`, so `/docs` shows what
this router serves and a method other than POST gets FastAPI's 405.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth_api.errors import BerthError
from berth_api.http.context import ROUTE_KEY, RequestContext, request_context
from berth_api.http.deps import ApiState
from berth_api.http.endpoints import PREDICTION_ENDPOINTS, PredictionEndpoint, prediction_endpoint
from berth_api.http.openapi import documentation_for
from berth_api.http.problems import send_problem
from berth_api.protocols.door import DoorRequest, Limits
from berth_api.protocols.v2 import BINARY_HEADER
from berth_common.logconfig import add_log_fields

_BINARY_HEADER = BINARY_HEADER.encode()
JSON = "application/json"


async def answer(
    state: ApiState,
    endpoint: PredictionEndpoint,
    parameters: dict[str, str],
    request: DoorRequest,
    context: RequestContext,
) -> bytes:
    """The whole prediction behind an endpoint: model, body, service, answer; or BerthError."""
    name = parameters.get("name")
    served = (
        state.registry.default()
        if name is None
        else state.registry.get(name, parameters.get("version"))
    )
    # every line logged from here on, the access log's included, names the model
    add_log_fields(model=served.bundle.name, model_version=served.bundle.version)
    limits = Limits(max_rows=state.settings.max_batch_rows)
    parsed = endpoint.door.parse(request, served.bundle.metadata, limits)
    prediction = await state.service.predict(
        served, parsed.instances, context.request_id, idempotent=context.supplied
    )
    return endpoint.door.render(prediction, parsed)


class PredictionRouter:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        found = prediction_endpoint(scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, parameters = found
        scope[ROUTE_KEY] = endpoint.path
        body, complete = await _read_body(receive)
        if not complete:  # the client went away: nobody to answer
            return
        headers = dict(scope["headers"])
        binary_length = headers.get(_BINARY_HEADER)
        request = DoorRequest(
            body=body,
            content_type=headers.get(b"content-type", b"").decode("latin-1"),
            inference_header_length=(
                binary_length.decode("latin-1") if binary_length is not None else None
            ),
        )
        state: ApiState = scope["state"]["berth"]
        try:
            content = await answer(state, endpoint, parameters, request, request_context(scope))
        except BerthError as exc:
            await send_problem(send, exc, endpoint.door.style)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def install_documented_routes(app: FastAPI) -> None:
    """FastAPI routes for the declared endpoints: what /docs shows, answered as the router
    answers (requests reach them only if the router is not installed)."""
    for endpoint in PREDICTION_ENDPOINTS:
        app.add_api_route(
            endpoint.path,
            _route_for(endpoint),
            methods=["POST"],
            operation_id=endpoint.operation,
            summary=endpoint.summary,
            tags=[endpoint.tag],
            **documentation_for(endpoint),
        )


def _route_for(endpoint: PredictionEndpoint) -> Any:
    async def route(request: Request) -> Response:
        state: ApiState = request.state.berth
        door_request = DoorRequest(
            body=await request.body(),
            content_type=request.headers.get("content-type", ""),
            inference_header_length=request.headers.get(BINARY_HEADER),
        )
        content = await answer(
            state, endpoint, dict(request.path_params), door_request, request_context(request.scope)
        )
        return Response(content, media_type=JSON)

    route.__name__ = endpoint.operation
    return route


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body, and False if the client went away before sending it."""
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True
