"""FastAPI dependencies: what a route may ask for, all of it built once by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from sqlalchemy import Engine

from berth_api.http.access import AccessPolicy
from berth_api.http.context import RequestContext, request_context
from berth_api.ledger.gateway import RedisGateway
from berth_api.serving.registry import ModelRegistry
from berth_api.serving.service import PredictionService
from berth_common.settings import ApiSettings


@dataclass(frozen=True)
class ApiState:
    settings: ApiSettings
    registry: ModelRegistry
    service: PredictionService
    redis: Redis
    engine: Engine
    gateway: RedisGateway
    # what /metrics renders: this process's figures merged with every other's
    metrics_registry: CollectorRegistry
    # the API-key policy the access middleware applies (the dashboard's login asks it too)
    access: AccessPolicy


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, a hop that cost about a tenth of the request path under load.


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.state.berth
    return state


async def get_context(request: Request) -> RequestContext:
    return request_context(request.scope)


State = Annotated[ApiState, Depends(get_state)]
Context = Annotated[RequestContext, Depends(get_context)]
