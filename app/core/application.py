"""The app factory every service built on this core shares: lifespan (engine,
session factory and Redis per process, the near cache if on), middleware, error
handling and OpenAPI.
app/main.py calls it with the domain routers; core's tests call it with a
test-only router, so core stands without any domain."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, nullcontext

import structlog
from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from app.core.auth.dependencies import authenticate
from app.core.auth.verifier import CredentialVerifier
from app.core.body_limit import BodyLimitMiddleware
from app.core.config import Settings, misspelled_settings
from app.core.db import create_engine, create_read_session_factory, create_session_factory
from app.core.docs import add_local_docs, fastapi_docs_url
from app.core.errors import register_exception_handlers
from app.core.logging import configure_logging
from app.core.metrics import install_metrics, worker_gauges
from app.core.middleware import RequestContextMiddleware
from app.core.near_cache import NearCache
from app.core.pending_deletes import PendingDeletes
from app.core.problems import install_problem_schema, problem_responses
from app.core.redis import OptionalRedis
from app.core.request_id import REQUEST_ID_HEADER
from app.core.state import AppState

logger = structlog.get_logger(__name__)

# FastAPI's own OpenTelemetry, all of it: see OPENTELEMETRY_ENABLED in app/core/config.py.
_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def operation_id(route: APIRoute) -> str:
    """Operation ids are the handler's name (`create_item`), so generated clients get
    readable method names; handler names are unique across the app."""
    return route.name


def build_app(
    settings: Settings,
    *,
    routers: Sequence[APIRouter],
    title: str,
    version: str,
    description: str = "",
    api_routers: Sequence[APIRouter] = (),
    api_prefix: str = "/api/v1",
) -> FastAPI:
    """Build an app serving `routers` as they are and `api_routers` under `api_prefix`.
    Nothing connects here: the engine and the Redis client are made in the lifespan,
    once per worker process, after any fork."""
    configure_logging(settings.log_level, settings.effective_log_format)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[AppState]:
        engine = create_engine(settings)
        redis = OptionalRedis.from_settings(settings, PendingDeletes(engine))
        near_cache = NearCache.from_settings(settings)
        if near_cache is not None:
            redis.on_resent = near_cache.announce
        auth = CredentialVerifier(settings)
        gauges = worker_gauges(engine, redis.breaker) if settings.metrics_enabled else nullcontext()
        listening = near_cache.listening() if near_cache is not None else nullcontext()
        logger.info("started", environment=settings.environment)
        for variable, setting in misspelled_settings(os.environ).items():
            logger.warning("not a setting: ignored", variable=variable, did_you_mean=setting)
        try:
            async with gauges, listening:
                yield AppState(
                    settings=settings,
                    engine=engine,
                    session_factory=create_session_factory(engine),
                    read_session_factory=create_read_session_factory(engine),
                    redis=redis,
                    near_cache=near_cache,
                    auth=auth,
                )
        finally:
            await auth.aclose()
            await redis.aclose()
            await engine.dispose()
            logger.info("stopped")

    app = FastAPI(
        title=title,
        version=version,
        description=description,
        lifespan=lifespan,
        docs_url=fastapi_docs_url(settings),
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        generate_unique_id_function=operation_id,
        responses=problem_responses(500),
        telemetry=None if settings.opentelemetry_enabled else _TELEMETRY_OFF,
    )
    for router in routers:
        app.include_router(router)
    # Each under the prefix directly, not through one "api" router that includes them:
    # FastAPI matches included routers level by level, and every level costs each request.
    # Deny by default: every API route needs an identity, even one that names no scope
    # (tests/test_auth_routes.py finds those); each route adds the scopes it needs.
    for router in api_routers:
        app.include_router(
            router,
            prefix=api_prefix,
            dependencies=[Depends(authenticate)],
            responses=problem_responses(401, 403),
        )

    add_local_docs(app, settings)
    register_exception_handlers(app)
    install_problem_schema(app)
    # Middleware added last runs first: the request id wraps everything, CORS answers
    # preflights, then oversized bodies are refused before the app reads them.
    app.add_middleware(BodyLimitMiddleware, max_body_size=settings.max_body_size)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER, "Location", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware)
    if settings.metrics_enabled:
        install_metrics(app, settings)  # outermost: it times everything below it
    return app
