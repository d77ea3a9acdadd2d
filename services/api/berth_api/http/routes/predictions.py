"""The stored ledger, read back by request id."""

from __future__ import annotations

from fastapi import APIRouter, Path

from berth_api.http.deps import State
from berth_api.http.middleware import REQUEST_ID_PATTERN
from berth_api.ledger.reads import stored_request
from berth_api.schemas import StoredRequest

router = APIRouter(prefix="/v1/predictions", tags=["ledger"])


@router.get(
    "/{request_id}",
    response_model=StoredRequest,
    responses={404: {"description": "Not stored (yet)"}, 503: {"description": "Database down"}},
)
def get_prediction(
    state: State, request_id: str = Path(pattern=REQUEST_ID_PATTERN.pattern)
) -> StoredRequest:
    """The rows stored for a request; 404 until the worker has stored them."""
    return stored_request(state.engine, request_id)
