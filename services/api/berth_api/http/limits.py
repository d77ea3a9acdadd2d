"""Request body size limit, enforced before the application reads a byte of the body.

A Content-Length over the limit is refused at once. A body without one (chunked) is read here up
to the limit and replayed to the application, so no client can make the API buffer more than the
limit, and the refusal is always a clean 413 rather than a parse error.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth_api.errors import BodyTooLarge
from berth_api.http.endpoints import error_style
from berth_api.http.problems import send_problem


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                # the server itself stops a body at its declared length
                await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        exc = BodyTooLarge(
            f"the request body is larger than {self.max_bytes} bytes (MAX_BODY_BYTES)"
        )
        await send_problem(send, exc, error_style(scope["path"]), {"Connection": "close"})


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives an app the body already read from the client, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
