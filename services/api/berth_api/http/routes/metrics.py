"""Prometheus metrics of every API process, merged (see berth_common.metrics)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from berth_api.http.deps import State

router = APIRouter(tags=["monitoring"])


@router.get("/metrics", response_class=Response)
async def metrics(state: State) -> Response:
    """Every metric in Prometheus' text format (see the README's Monitoring section). With
    API_KEYS set it takes an API key or METRICS_KEY; the metrics port (9100) serves the same
    without a key, for the internal network only."""
    body = await run_in_threadpool(generate_latest, state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
