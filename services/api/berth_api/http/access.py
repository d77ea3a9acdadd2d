"""The API-key policy, in one place for every transport.

With `API_KEYS` unset everything is open. With keys set, every path needs
`Authorization: Bearer <key>` except the public ones declared in `endpoints.PUBLIC_PATHS`
(health and docs), which answer anyone but show their details (readiness checks, the model
catalogue in the OpenAPI document) only to a key holder. Unknown paths need a key too, so that
nothing about the API can be learnt without one. The check runs before any body is read.

The dashboard's paths (`/dashboard` and below) also take a cookie, because a browser cannot send
a header when it opens a page: `/dashboard/login` (public, as are the style sheet and icon it
loads) takes a key from a form or `?key=` and sets `berth_dashboard` (HttpOnly, SameSite=Strict,
Path=/dashboard). The cookie holds a token derived from the key (an HMAC), never the key itself,
and opens no other path: a stolen cookie reads the dashboard and cannot predict. A browser that
opens `/dashboard` without either is sent to the login form.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from berth_api.errors import MalformedRequest, Unauthorized
from berth_api.http.context import request_context
from berth_api.http.endpoints import PUBLIC_PATHS, error_style
from berth_api.http.problems import send_problem

AUTHORIZATION = b"authorization"
COOKIE = b"cookie"

METRICS_PATH = "/metrics"
DASHBOARD_PATH = "/dashboard"
DASHBOARD_LOGIN_PATH = "/dashboard/login"
DASHBOARD_COOKIE = "berth_dashboard"
_DASHBOARD_TOKEN_CONTEXT = b"berth dashboard cookie v1"


def is_dashboard_path(path: str) -> bool:
    return path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/")


class AccessPolicy:
    def __init__(self, keys: Sequence[str], *, metrics_key: str = "") -> None:
        self._keys = [key.encode() for key in keys]
        # a scraper's own key, good for /metrics only
        self._metrics_keys = [*self._keys, *([metrics_key.encode()] if metrics_key else [])]
        # what the dashboard's cookie holds for each key
        self._cookie_tokens = [
            hmac.new(key, _DASHBOARD_TOKEN_CONTEXT, hashlib.sha256).hexdigest().encode()
            for key in self._keys
        ]

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

    def dashboard_cookie(self, key: str) -> str | None:
        """The dashboard cookie's value for `key` when it is an API key (a metrics key is not),
        None otherwise; compared in constant time like a bearer key."""
        supplied = key.strip().encode()
        found = None
        for key_bytes, token in zip(self._keys, self._cookie_tokens, strict=True):
            if hmac.compare_digest(supplied, key_bytes):
                found = token.decode()
        return found

    def cookie_allows(self, cookie_headers: Sequence[bytes]) -> bool:
        """Whether the request's cookies hold a valid dashboard token (meant for dashboard paths
        only: the caller checks the path)."""
        if not cookie_headers:
            return False
        cookies = cookie_parser(b"; ".join(cookie_headers).decode("latin-1"))
        supplied = cookies.get(DASHBOARD_COOKIE, "").encode("latin-1", "replace")
        matched = False
        for token in self._cookie_tokens:
            matched |= hmac.compare_digest(supplied, token)
        return matched


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
            elif is_dashboard_path(path) and self.policy.cookie_allows(
                [v for k, v in scope["headers"] if k == COOKIE]
            ):
                pass
            else:
                try:
                    self.policy.check(authorization, path)
                except (Unauthorized, MalformedRequest) as exc:
                    if path == DASHBOARD_PATH and scope["method"] in ("GET", "HEAD"):
                        await _redirect_to_login(send, scope["query_string"])
                    else:
                        await send_problem(send, exc, error_style(path))
                    return
        await self.app(scope, receive, send)


async def _redirect_to_login(send: Send, query: bytes) -> None:
    """A browser opening the dashboard without a key: to the login form, with the page's query
    (a `?key=` in it logs in at once)."""
    location = DASHBOARD_LOGIN_PATH.encode() + (b"?" + query if query else b"")
    headers = [(b"location", location), (b"content-length", b"0"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
