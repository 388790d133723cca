"""The app as the image serves it, with credential verification taken out: the
reference of the "bearer read >= 0.8 x unauthenticated" bar (scripts/bench.py).

Only the worker's Authenticator (app/core/auth/verifier.py) is swapped, in the lifespan
state, for one returning a fixed principal; `authenticate` and the scope check still run.
Not FastAPI's `app.dependency_overrides`: while any is set, FastAPI rebuilds every
dependency of every request from its signature, which made this server slower than the
one verifying tokens. Never served outside the bench (bench/compose.yml mounts it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.principal import Principal
from app.core.state import AppState
from app.main import app

PRINCIPAL = Principal(subject="bench", scopes=frozenset({"items:read"}), kind="token")


class NoVerification:
    """An Authenticator (app/core/principal.py) that believes every request."""

    def __init__(self) -> None:
        self.blocked_until: dict[str, float] = {}

    async def principal(
        self,
        authorization: str | None,
        api_key: str | None,
        sessions: async_sessionmaker[AsyncSession],
    ) -> Principal:
        return PRINCIPAL

    def known(self, authorization: str | None, api_key: str | None) -> bool:
        return True

    async def aclose(self) -> None:
        pass


own_lifespan = app.router.lifespan_context


@asynccontextmanager
async def lifespan(application: FastAPI) -> AsyncIterator[AppState]:
    # The app's own lifespan (engine, Redis, its verifiers, closed on the way out),
    # with the authenticator replaced in the state each request reads.
    async with own_lifespan(application) as state:
        yield {**cast("AppState", state), "auth": NoVerification()}


app.router.lifespan_context = lifespan
__all__ = ["app"]
