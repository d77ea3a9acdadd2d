"""Reads of the stored ledger, for `GET /v1/predictions/{request_id}`."""

from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from berth_api.errors import LedgerUnavailable, PredictionNotFound
from berth_api.schemas import ModelRef, StoredPrediction, StoredRequest
from berth_common.tables import predictions


def stored_request(engine: Engine, request_id: str) -> StoredRequest:
    """Blocking: the rows stored for a request, or PredictionNotFound until the worker has them."""
    query = (
        select(predictions)
        .where(predictions.c.request_id == request_id)
        .order_by(predictions.c.row_index)
    )
    try:
        with engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
    except OperationalError as exc:
        raise LedgerUnavailable("the ledger database cannot be reached; try again") from exc
    if not rows:
        raise PredictionNotFound(
            f"nothing stored for request {request_id!r} (yet: the worker stores a prediction "
            "within about a second of serving it)"
        )
    return StoredRequest(
        request_id=request_id,
        rows=[
            StoredPrediction(
                row_index=row["row_index"],
                model=ModelRef(name=row["model_name"], version=row["model_version"]),
                features=row["features"],
                prediction=row["prediction"],
                probabilities=row["probabilities"],
                cached=row["cached"],
                latency_ms=row["latency_ms"],
                served_at=row["served_at"],
                stored_at=row["stored_at"],
            )
            for row in rows
        ],
    )
