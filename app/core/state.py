"""The lifespan's typed state and the async providers that read it.

The lifespan yields an `AppState`; Starlette copies it into each request's scope.
Routers and services never touch `request.state`: they declare `SettingsDep`,
`RedisDep` or `SessionDep` (app/core/db.py), so mypy sees every coupling. The
providers are `async def` on purpose: FastAPI runs plain `def` dependencies in a
thread pool, a hop per dependency per request for what is a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.near_cache import NearCache
from app.core.principal import Authenticator
from app.core.redis import OptionalRedis


class AppState(TypedDict):
    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    # Read-only sessions in AUTOCOMMIT on the same pool (app/core/db.py, ReadSessionDep).
    read_session_factory: async_sessionmaker[AsyncSession]
    redis: OptionalRedis
    near_cache: NearCache | None  # None unless turned on (CACHE_LOCAL_TTL_SECONDS)
    auth: Authenticator  # the worker's token and API key verifiers (app/core/auth/)


def app_state(request: Request) -> AppState:
    """This request's view of the lifespan state."""
    return cast("AppState", request.scope["state"])


async def get_app_settings(request: Request) -> Settings:
    return app_state(request)["settings"]


async def get_engine(request: Request) -> AsyncEngine:
    return app_state(request)["engine"]


async def get_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    return app_state(request)["session_factory"]


async def get_read_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    return app_state(request)["read_session_factory"]


async def get_redis(request: Request) -> OptionalRedis:
    return app_state(request)["redis"]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[AsyncEngine, Depends(get_engine)]
SessionFactoryDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_factory)]
ReadSessionFactoryDep = Annotated[
    async_sessionmaker[AsyncSession], Depends(get_read_session_factory)
]
RedisDep = Annotated[OptionalRedis, Depends(get_redis)]
