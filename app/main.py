"""The application factory: wiring only. Entry point: `app.main:app`."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.core.config import Settings, SettingsError, get_settings
from app.core.db import create_engine, create_session_factory
from app.core.errors import register_exception_handlers
from app.core.logging import configure_logging
from app.core.middleware import RequestContextMiddleware
from app.core.redis import create_redis
from app.core.request_id import REQUEST_ID_HEADER
from app.health.router import router as health_router
from app.items.router import router as items_router

logger = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Nothing connects here: the engine and Redis client are made in
    the lifespan, once per worker process, after any fork."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.effective_log_format)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = create_engine(settings)
        redis = create_redis(settings)
        logger.info("started", environment=settings.environment)
        try:
            # Lifespan state: copied into every request's `request.state`.
            yield {
                "settings": settings,
                "engine": engine,
                "session_factory": create_session_factory(engine),
                "redis": redis,
            }
        finally:
            await redis.aclose()
            await engine.dispose()
            logger.info("stopped")

    app = FastAPI(
        title="FastAPI service",
        version="0.1.0",
        lifespan=lifespan,
        # The interactive docs are for people; production serves only the schema.
        docs_url=None if settings.environment == "production" else "/docs",
        redoc_url=None,
    )

    api_v1 = APIRouter(prefix="/api/v1")
    api_v1.include_router(items_router)
    app.include_router(health_router)
    app.include_router(api_v1)

    register_exception_handlers(app)
    # Added last, so it runs first: every response, errors included, gets a request id.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[REQUEST_ID_HEADER, "Location", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware)
    return app


try:
    app = create_app()
except SettingsError as exc:
    sys.exit(str(exc))
