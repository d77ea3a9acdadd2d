"""Ground truth: the true outcome of served rows, one request at a time or in bulk."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from berth_api.errors import UnsupportedMediaType
from berth_api.http.deps import State
from berth_api.http.middleware import REQUEST_ID_PATTERN
from berth_api.ledger.feedback import FeedbackService
from berth_api.protocols.feedback import (
    BulkFeedbackAccepted,
    FeedbackAccepted,
    FeedbackBody,
    parse_bulk,
)
from berth_api.protocols.json_body import require_json

router = APIRouter(tags=["feedback"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Body not readable (JSON, CSV, UTF-8)"},
    415: {"description": "Content type not accepted"},
    422: {"description": "Rows or actuals the request or its model cannot have"},
    503: {"description": "Neither Redis nor the spool could keep the feedback"},
}
# Documented as CSV; JSON lines (application/x-ndjson, application/jsonl) are read too, but
# OpenAPI tools, schemathesis among them, have no serializer for them.
_BULK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {"type": "string"},
                "example": "request_id,row_index,actual\norder-1234,0,setosa\n",
            }
        },
    }
}


async def _json_body(request: Request) -> None:
    require_json(request.headers.get("content-type", ""))


async def _service(state: State) -> FeedbackService:
    return FeedbackService(state.settings, state.registry, state.engine, state.redis, state.gateway)


Feedback = Annotated[FeedbackService, Depends(_service)]


@router.post(
    "/v1/predictions/{request_id}/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    dependencies=[Depends(_json_body)],
    responses={**_ERRORS, 404: {"description": "No such request, and none on its way"}},
)
async def submit_feedback(
    body: FeedbackBody,
    feedback: Feedback,
    request_id: str = Path(pattern=REQUEST_ID_PATTERN.pattern),
) -> FeedbackAccepted:
    """The true outcome of a served request's rows, checked against the model that served it
    (a classifier's label, a regressor's number). A correction is sent the same way: the newest
    value is the row's actual, the earlier ones its history; the same value sent again is
    stored once."""
    return await feedback.submit(request_id, body)


@router.post(
    "/v1/feedback",
    status_code=202,
    response_model=BulkFeedbackAccepted,
    openapi_extra=_BULK_BODY,
    responses=_ERRORS,
)
async def submit_bulk_feedback(
    request: Request, feedback: Feedback, state: State
) -> BulkFeedbackAccepted:
    """Labels in bulk: CSV (`text/csv`) with the header `request_id,row_index,actual`, or JSON
    lines (`application/x-ndjson` or `application/jsonl`), one object with those members per
    line. The lines that can be accepted are; the others are listed with the reason (a 422 when
    none can be)."""
    content_type = request.headers.get("content-type", "")
    if not content_type:
        raise UnsupportedMediaType("send text/csv or application/x-ndjson")
    upload = parse_bulk(await request.body(), content_type, state.settings.max_string_length)
    return await feedback.submit_bulk(upload)
