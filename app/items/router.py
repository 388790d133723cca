"""HTTP for items: parse, call the service, shape the response. No logic here."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, Response, status

from app.core.auth.dependencies import requires
from app.core.db import ReadSessionDep, SessionDep
from app.core.idempotency import IdempotentRoute, idempotent
from app.core.pagination import Page, PageParamsDep
from app.core.problems import problem_responses
from app.core.rate_limit import rate_limit
from app.core.state import ReadSessionFactoryDep
from app.items import service
from app.items.cache import ItemCacheDep
from app.items.schemas import ItemCreate, ItemRead, ItemUpdate

router = APIRouter(
    prefix="/items",
    tags=["items"],
    responses=problem_responses(503),
    route_class=IdempotentRoute,
)

writes = rate_limit("writes")

ITEM_ID = {"item_id": "$response.body#/id"}
CREATED = {
    "headers": {"Location": {"description": "The new item's URL.", "schema": {"type": "string"}}},
    # Tells clients (and generated SDKs, and fuzzers) where the new id leads.
    "links": {
        name: {"operationId": name, "parameters": ITEM_ID}
        for name in ("get_item", "update_item", "delete_item")
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[requires("items:write"), writes, idempotent],
    responses={201: CREATED, **problem_responses(409, 422, 429)},
)
async def create_item(
    data: ItemCreate, session: SessionDep, request: Request, response: Response
) -> ItemRead:
    """Create an item; its URL is in the Location header. Names are unique."""
    item = await service.create_item(session, data)
    response.headers["Location"] = str(request.url_for("get_item", item_id=item.id))
    return ItemRead.model_validate(item)


@router.get("", dependencies=[requires("items:read")])
async def list_items(session: ReadSessionDep, page: PageParamsDep) -> Page[ItemRead]:
    """List items, oldest first, a page at a time: follow `next_cursor`."""
    items, next_cursor = await service.list_items(session, page)
    return Page(items=[ItemRead.model_validate(item) for item in items], next_cursor=next_cursor)


@router.get(
    "/{item_id}",
    response_model=ItemRead,
    dependencies=[requires("items:read")],
    responses=problem_responses(404),
)
async def get_item(
    item_id: uuid.UUID, sessions: ReadSessionFactoryDep, cache: ItemCacheDep
) -> Response:
    """Get one item, from the cache when it can: the cached JSON is sent as stored."""
    body = await service.get_item_json(sessions, cache, item_id)
    return Response(body, media_type="application/json")


@router.patch(
    "/{item_id}",
    dependencies=[requires("items:write"), writes],
    responses=problem_responses(404, 409, 429),
)
async def update_item(
    item_id: uuid.UUID, changes: ItemUpdate, session: SessionDep, cache: ItemCacheDep
) -> ItemRead:
    """Change some fields of an item: only the fields sent are changed."""
    item = await service.update_item(session, cache, item_id, changes)
    return ItemRead.model_validate(item)


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    dependencies=[requires("items:write"), writes],
    responses=problem_responses(404, 409, 429),
)
async def delete_item(item_id: uuid.UUID, session: SessionDep, cache: ItemCacheDep) -> None:
    """Delete an item. Refused (409) while orders refer to it."""
    await service.delete_item(session, cache, item_id)
