"""HTTP for items: parse, call the service, shape the response. No logic here."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from app.core.db import SessionDep
from app.core.rate_limit import limit_writes
from app.core.redis import RedisDep
from app.items import service
from app.items.cache import ItemCache
from app.items.schemas import MAX_PAGE_SIZE, ItemCreate, ItemPage, ItemRead, ItemUpdate

router = APIRouter(prefix="/items", tags=["items"])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No item has this id"},
    409: {"description": "Another item has this name"},
    429: {"description": "Too many write requests from this client"},
}


def get_item_cache(request: Request, redis: RedisDep) -> ItemCache:
    return ItemCache(redis, request.state.settings.item_cache_ttl_seconds)


CacheDep = Annotated[ItemCache, Depends(get_item_cache)]
WriteLimit = Depends(limit_writes)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteLimit],
    responses={409: ERRORS[409], 429: ERRORS[429]},
)
async def create_item(
    data: ItemCreate, session: SessionDep, request: Request, response: Response
) -> ItemRead:
    item = await service.create_item(session, data)
    response.headers["Location"] = str(request.url_for("get_item", item_id=item.id))
    return ItemRead.model_validate(item)


@router.get("")
async def list_items(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ItemPage:
    items, total = await service.list_items(session, limit=limit, offset=offset)
    return ItemPage(
        items=[ItemRead.model_validate(item) for item in items],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{item_id}", responses={404: ERRORS[404]})
async def get_item(item_id: uuid.UUID, session: SessionDep, cache: CacheDep) -> ItemRead:
    return await service.get_item_cached(session, cache, item_id)


@router.patch("/{item_id}", dependencies=[WriteLimit], responses=ERRORS)
async def update_item(
    item_id: uuid.UUID, changes: ItemUpdate, session: SessionDep, cache: CacheDep
) -> ItemRead:
    item = await service.update_item(session, cache, item_id, changes)
    return ItemRead.model_validate(item)


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteLimit],
    responses={404: ERRORS[404], 429: ERRORS[429]},
)
async def delete_item(item_id: uuid.UUID, session: SessionDep, cache: CacheDep) -> None:
    await service.delete_item(session, cache, item_id)
