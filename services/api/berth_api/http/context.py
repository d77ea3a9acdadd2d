"""What the outer middleware learned about a request, for the doors and routes inside."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope

SCOPE_KEY = "berth.request"
# The template of the declared endpoint the prediction router matched, for the metrics.
ROUTE_KEY = "berth.route"


@dataclass(slots=True)
class RequestContext:
    request_id: str
    # The client named the request (X-Request-ID): the id is its idempotency key.
    supplied: bool
    # Whether the request may see what API_KEYS protects (always, when no keys are set).
    authorized: bool = True


def request_context(scope: Scope) -> RequestContext:
    context: RequestContext = scope[SCOPE_KEY]
    return context
