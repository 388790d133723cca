"""The floors `make bench` holds the app to: what plain FastAPI serves on this machine,
with the app's image and Gunicorn configuration (docs/benchmarks.md):
- `health`: one route answering /health's body and headers, no middleware;
- `data`: a page of items and one item by id as a FastAPI + SQLAlchemy tutorial writes
  them: a session per request, the app's query and pool size, a pydantic response model.

Their bodies are the app's byte for byte (scripts/bench.py checks it before measuring).
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

health = FastAPI()


@health.get("/health")
async def liveness() -> Response:
    return Response(
        b'{"status":"pass"}',
        media_type="application/health+json",
        headers={"Cache-Control": "no-store"},
    )


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime


class Page(BaseModel):
    items: list[ItemRead]
    next_cursor: str | None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, async_sessionmaker[AsyncSession]]]:
    # One engine per worker, made after the fork.
    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+asyncpg://", 1)
    size = int(os.environ.get("DB_POOL_SIZE", "10"))  # the app's default
    engine = create_async_engine(url, pool_size=size, max_overflow=0)
    yield {"sessions": async_sessionmaker(engine, expire_on_commit=False)}
    await engine.dispose()


data = FastAPI(lifespan=lifespan)
data.add_api_route("/health", liveness)  # the image's healthcheck; not measured


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def cursor(item: Item) -> str:
    # As app.core.pagination.encode_cursor writes it.
    plain = json.dumps([str(item.created_at), str(item.id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")


@data.get("/api/v1/items")
async def list_items(session: SessionDep, limit: int = 20) -> Page:
    query = select(Item).order_by(Item.created_at, Item.id).limit(limit + 1)
    items = list(await session.scalars(query))
    next_cursor = cursor(items[limit - 1]) if len(items) > limit else None
    return Page(items=[ItemRead.model_validate(i) for i in items[:limit]], next_cursor=next_cursor)


@data.get("/api/v1/items/{item_id}")
async def get_item(item_id: uuid.UUID, session: SessionDep) -> ItemRead:
    item = await session.get(Item, item_id)
    if item is None:
        raise HTTPException(404)
    return ItemRead.model_validate(item)
