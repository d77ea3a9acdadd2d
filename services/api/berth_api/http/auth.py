"""Optional bearer API keys (`API_KEYS`): off when unset, required on data endpoints when set."""

from __future__ import annotations

import hmac

from fastapi import Request

from berth_api.errors import Unauthorized
from berth_api.http.deps import get_state


async def require_api_key(request: Request) -> None:
    """Async so that FastAPI runs it on the loop, not in a thread (see `deps`)."""
    keys = (await get_state(request)).settings.api_key_list
    check_api_key(keys, request.headers.get("authorization", ""))


def check_api_key(keys: list[str], authorization: str) -> None:
    """Raises Unauthorized unless no keys are set or `authorization` bears one of them."""
    if not keys:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
    supplied = token.strip().encode()
    # Compare with every key, whatever matches, so timing tells nothing about which is close.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(supplied, key.encode())
    if not matched:
        raise Unauthorized("the API key is not valid")
