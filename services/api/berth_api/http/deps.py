"""FastAPI dependencies: what a route may ask for, all of it built once by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy import Engine

from berth_api.ledger.gateway import RedisGateway
from berth_api.serving.registry import ModelRegistry
from berth_api.serving.service import PredictionService
from berth_common.logconfig import request_id_var
from berth_common.settings import ApiSettings


@dataclass(frozen=True)
class ApiState:
    settings: ApiSettings
    registry: ModelRegistry
    service: PredictionService
    redis: Redis
    engine: Engine
    gateway: RedisGateway


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in a worker thread, a hop that cost about a tenth of the request path under load.


async def get_state(request: Request) -> ApiState:
    state: ApiState = request.state.berth
    return state


async def get_request_id() -> str:
    request_id = request_id_var.get()
    assert request_id is not None, "RequestIdMiddleware sets it for every HTTP request"
    return request_id


State = Annotated[ApiState, Depends(get_state)]
RequestId = Annotated[str, Depends(get_request_id)]
