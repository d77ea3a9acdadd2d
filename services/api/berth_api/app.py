"""The API application: `create_app(settings)` builds it; the lifespan owns every connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import create_engine
from starlette.concurrency import run_in_threadpool

from berth_api import __doc__ as package_doc
from berth_api import __version__
from berth_api.auth import require_api_key
from berth_api.deps import ApiState
from berth_api.errors import install_error_handlers
from berth_api.limits import BodySizeLimitMiddleware
from berth_api.middleware import RequestIdMiddleware
from berth_api.protocols.v2 import InferenceRequest
from berth_api.publisher import RedisGateway
from berth_api.registry import ModelRegistry
from berth_api.routes import health, mlflow, models, predict, predictions, v2
from berth_api.service import PredictionService
from berth_common.logconfig import configure_logging
from berth_common.settings import ApiSettings, load_or_exit


def redis_client(settings: ApiSettings) -> Redis:
    """A client that fails fast: a slow Redis must cost a request milliseconds, not seconds."""
    timeout = settings.redis_timeout_seconds
    return Redis(
        **settings.redis_kwargs(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or load_or_exit(ApiSettings)
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        registry = await run_in_threadpool(ModelRegistry.load, settings)
        redis = redis_client(settings)
        engine = create_engine(settings.database_url, pool_pre_ping=True, pool_size=4)
        gateway = RedisGateway(redis, settings.ledger_stream, settings.cache_ttl_seconds)
        service = PredictionService(
            gateway, settings.redis_key_prefix, settings.max_batch_rows, settings.max_string_length
        )
        yield {"berth": ApiState(settings, registry, service, redis, engine)}
        await redis.aclose()
        engine.dispose()

    app = FastAPI(
        title="Berth",
        summary="scikit-learn models over REST, every prediction recorded in PostgreSQL",
        description=package_doc or "",
        version=__version__,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    protected = [Depends(require_api_key)]
    for module in (predict, models, predictions):
        app.include_router(module.router, dependencies=protected)
    app.include_router(health.router)
    app.include_router(v2.router)
    app.include_router(v2.models_router)
    app.include_router(mlflow.router)
    # the last added runs first: every response, a 413 included, carries the request id
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware, access_log=settings.access_log)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the schemas of bodies that routes parse themselves."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    v2_request = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(v2_request.pop("$defs", {}))
    components["InferenceRequest"] = v2_request
    app.openapi_schema = schema
    return schema
