"""The API-key policy, in one place for every transport.

With `API_KEYS` unset everything is open. With keys set, every path needs
`Authorization: Bearer <key>` except the public ones declared in `endpoints.PUBLIC_PATHS`
(health and docs), which answer anyone but show their details (readiness checks, the model
catalogue in the OpenAPI document) only to a key holder. Unknown paths need a key too, so that
nothing about the API can be learnt without one. The check runs before any body is read.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from berth_api.errors import MalformedRequest, Unauthorized
from berth_api.http.context import request_context
from berth_api.http.endpoints import PUBLIC_PATHS, error_style
from berth_api.http.problems import send_problem

AUTHORIZATION = b"authorization"


METRICS_PATH = "/metrics"


class AccessPolicy:
    def __init__(self, keys: Sequence[str], *, metrics_key: str = "") -> None:
        self._keys = [key.encode() for key in keys]
        # a scraper's own key, good for /metrics only
        self._metrics_keys = [*self._keys, *([metrics_key.encode()] if metrics_key else [])]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: Sequence[bytes], path: str = "") -> None:
        """Raises unless no keys are set or the one Authorization header bears one of them."""
        if not self._keys:
            return
        keys = self._metrics_keys if path == METRICS_PATH else self._keys
        if len(authorization) > 1:
            # Proxies and frameworks disagree on which of two headers counts: refuse to guess.
            raise MalformedRequest("send one Authorization header, not several")
        scheme, _, token = (authorization[0] if authorization else b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        supplied = token.strip()
        # Compare with every key, whatever matches, so timing tells nothing about which is close.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(supplied, key)
        if not matched:
            raise Unauthorized("the API key is not valid")

    def allows(self, authorization: Sequence[bytes]) -> bool:
        try:
            self.check(authorization)
        except (Unauthorized, MalformedRequest):
            return False
        return True


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.policy.enabled:
            authorization = [v for k, v in scope["headers"] if k == AUTHORIZATION]
            path = scope["path"]
            if path in PUBLIC_PATHS:
                request_context(scope).authorized = self.policy.allows(authorization)
            else:
                try:
                    self.policy.check(authorization, path)
                except (Unauthorized, MalformedRequest) as exc:
                    await send_problem(send, exc, error_style(path))
                    return
        await self.app(scope, receive, send)
