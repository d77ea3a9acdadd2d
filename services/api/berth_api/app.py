"""The API application: `create_app(settings)` builds it; the lifespan owns every connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import create_engine
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from berth_api import __doc__ as package_doc
from berth_api import __version__
from berth_api.http.access import AccessMiddleware, AccessPolicy
from berth_api.http.deps import ApiState, Context
from berth_api.http.dispatch import PredictionRouter, install_documented_routes
from berth_api.http.endpoints import prediction_endpoint
from berth_api.http.limits import BodySizeLimitMiddleware
from berth_api.http.middleware import RequestIdMiddleware
from berth_api.http.openapi import build_openapi
from berth_api.http.problems import install_error_handlers
from berth_api.http.routes import dashboard, health, mlflow, models, predictions, v2
from berth_api.http.routes import feedback as feedback_route
from berth_api.http.routes import metrics as metrics_route
from berth_api.ledger.gateway import RedisGateway
from berth_api.ledger.references import record_versions_forever
from berth_api.ledger.spool import LedgerSpool
from berth_api.monitor import monitor_forever, record_models
from berth_api.monitoring import ApiMetrics
from berth_api.serving.registry import ModelRegistry
from berth_api.serving.service import PredictionService
from berth_common.heap import settle_heap
from berth_common.logconfig import configure_logging
from berth_common.metrics import MergedCollector, SnapshotDirectory
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


class BerthApp(FastAPI):
    """FastAPI, with a shorter way in for predictions.

    A prediction passes Berth's own layers (request id, access, body limit, the prediction
    router) and nothing else: entering FastAPI first (its telemetry check, Starlette's error and
    exception middleware, each wrapping `send`) cost more than a tenth of a one-row prediction's
    CPU. Every other request goes through FastAPI, with the same layers installed inside it,
    where FastAPI's error handling works as it expects.
    """

    _front: ASGIApp | None = None

    def add_layers(self, layers: list[tuple[type[Any], dict[str, Any]]]) -> None:
        """Installs `layers` (innermost first) in FastAPI, and again around FastAPI's core."""
        front: ASGIApp = super().__call__
        for layer, options in layers:
            self.add_middleware(cast(Any, layer), **options)
            front = layer(front, **options)
        self._front = front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._front is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and prediction_endpoint(scope["path"]) is not None
        ):
            scope["app"] = self
            await self._front(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or load_or_exit(ApiSettings)
    configure_logging(settings.log_level, settings.log_format)

    # The document lists each served model (for key holders), so it is built after the lifespan
    # loaded them; both forms are built once, on first request.
    documents: dict[bool, dict[str, Any]] = {}
    loaded: dict[str, ModelRegistry] = {}
    metrics = ApiMetrics(enabled=settings.metrics_enabled)
    snapshots = SnapshotDirectory(settings.metrics_dir)
    metrics_registry = CollectorRegistry(auto_describe=False)
    metrics_registry.register(MergedCollector(metrics.set, snapshots))
    policy = AccessPolicy(
        settings.api_key_list, metrics_key=settings.metrics_key.get_secret_value()
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        registry = await run_in_threadpool(ModelRegistry.load, settings, metrics)
        record_models(metrics, registry)
        documents.clear()
        loaded["registry"] = registry
        redis = redis_client(settings)
        engine = create_engine(
            settings.database_url,
            pool_pre_ping=True,
            pool_size=4,
            connect_args={"connect_timeout": 2},
        )
        spool = LedgerSpool(settings.spool_dir)
        gateway = RedisGateway(
            redis,
            keys=settings.keys,
            cache_ttl_seconds=settings.cache_ttl_seconds,
            spool=spool,
            metrics=metrics,
        )
        stop = asyncio.Event()
        replay = asyncio.create_task(
            gateway.replay_forever(settings.spool_replay_interval_seconds, stop)
        )
        service = PredictionService(
            gateway,
            settings.keys,
            settings.max_batch_rows,
            settings.max_string_length,
            metrics=metrics,
            idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
            idempotency_wait_seconds=settings.idempotency_wait_seconds,
        )
        monitor = asyncio.create_task(
            monitor_forever(metrics, snapshots, settings, redis, gateway, stop)
        )
        # what each loaded version answers and its training reference, for the SQL views
        bundles = [served.bundle.metadata for served in registry.models.values()]
        versions = asyncio.create_task(record_versions_forever(engine, bundles, stop))
        # Everything loaded so far (libraries, models) lives as long as the process: moved out of
        # the collector's sight, a full collection no longer walks it, which under load had
        # stalled requests for 100 ms and more; and requests in flight no longer set it off.
        settle_heap()
        yield {
            "berth": ApiState(
                settings, registry, service, redis, engine, gateway, metrics_registry, policy
            )
        }
        stop.set()
        # they end at their next step; a step stuck on a dead Redis is cut short
        _done, stuck = await asyncio.wait({replay, monitor, versions}, timeout=5)
        for task in stuck:
            task.cancel()
        # the last figures of this process, for the sums the others still serve
        with contextlib.suppress(OSError):
            snapshots.publish(metrics.set)
        # whatever Redis can take now is not left waiting for the next start
        await gateway.replay_spool()
        spool.close()
        registry.close()
        await redis.aclose()
        engine.dispose()

    app = BerthApp(
        title="Berth",
        summary="scikit-learn models over REST, every prediction recorded in PostgreSQL",
        description=package_doc or "",
        version=__version__,
        lifespan=lifespan,
        # served below, so that the catalogue in them follows the access policy
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(context: Context) -> JSONResponse:
        detailed = context.authorized
        if detailed not in documents:
            documents[detailed] = build_openapi(app, loaded.get("registry") if detailed else None)
        return JSONResponse(documents[detailed])

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Berth - Swagger UI")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="Berth - ReDoc")

    install_error_handlers(app)
    install_documented_routes(app)
    for module in (models, predictions, health, v2, mlflow, metrics_route, dashboard):
        app.include_router(module.router)
    app.include_router(v2.models_router)
    app.include_router(feedback_route.router)
    # The last added runs first: every response, a 401 or 413 included, carries the request id,
    # the key is checked before a body is read, and only then are the prediction paths routed.
    app.add_layers(
        [
            (PredictionRouter, {}),
            (BodySizeLimitMiddleware, {"max_bytes": settings.max_body_bytes}),
            (AccessMiddleware, {"policy": policy}),
            (RequestIdMiddleware, {"metrics": metrics, "access_log": settings.access_log}),
        ]
    )
    return app
