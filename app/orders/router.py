"""HTTP for orders: parse, call the service, shape the response. No logic here."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.core.db import ReadSessionDep, SessionDep
from app.core.idempotency import IdempotentRoute, idempotent
from app.core.pagination import Page, PageParamsDep
from app.core.problems import problem_responses
from app.core.rate_limit import rate_limit
from app.orders import service
from app.orders.schemas import OrderCreate, OrderRead

router = APIRouter(
    prefix="/orders",
    tags=["orders"],
    responses=problem_responses(503),
    route_class=IdempotentRoute,
)

CREATED = {
    "headers": {"Location": {"description": "The new order's URL.", "schema": {"type": "string"}}},
    # Tells clients (and generated SDKs, and fuzzers) where the new id leads.
    "links": {
        "get_order": {"operationId": "get_order", "parameters": {"order_id": "$response.body#/id"}}
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    dependencies=[rate_limit("writes"), idempotent],
    responses={201: CREATED, **problem_responses(409, 429)},
)
async def create_order(
    data: OrderCreate, session: SessionDep, request: Request, response: Response
) -> OrderRead:
    """Order a quantity of an item; 422 if the item does not exist."""
    order = await service.create_order(session, data)
    response.headers["Location"] = str(request.url_for("get_order", order_id=order.id))
    return OrderRead.model_validate(order)


@router.get("")
async def list_orders(
    session: ReadSessionDep,
    page: PageParamsDep,
    item_id: Annotated[uuid.UUID | None, Query(description="Only this item's orders.")] = None,
) -> Page[OrderRead]:
    """List orders with their item, oldest first, a page at a time."""
    orders, next_cursor = await service.list_orders(session, page, item_id=item_id)
    return Page(items=[OrderRead.model_validate(o) for o in orders], next_cursor=next_cursor)


@router.get("/{order_id}", responses=problem_responses(404))
async def get_order(order_id: uuid.UUID, session: ReadSessionDep) -> OrderRead:
    """Get one order with its item."""
    return OrderRead.model_validate(await service.get_order(session, order_id))
