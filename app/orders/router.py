"""HTTP for orders: parse, call the service, shape the response. No logic here."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.core.auth.dependencies import requires
from app.core.db import ReadSessionDep, SessionDep
from app.core.idempotency import IdempotentRoute, idempotent
from app.core.pagination import Page, PageParamsDep
from app.core.principal import Principal
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
    # The scope first: a caller without it gets 403, never a 429 of a budget it cannot spend.
    dependencies=[requires("orders:write"), rate_limit("writes"), idempotent],
    responses={201: CREATED, **problem_responses(409, 429)},
)
async def create_order(
    data: OrderCreate,
    session: SessionDep,
    request: Request,
    response: Response,
    principal: Annotated[Principal, requires("orders:write")],
) -> OrderRead:
    """Order a quantity of an item, as the caller; 422 if the item does not exist."""
    order = await service.create_order(session, data, owner=principal.subject)
    response.headers["Location"] = str(request.url_for("get_order", order_id=order.id))
    return OrderRead.model_validate(order)


def visible_to(principal: Principal) -> str | None:
    """The owner whose orders `principal` sees: its own, or everyone's (None) for an admin."""
    return None if principal.can_administer("orders") else principal.subject


@router.get("")
async def list_orders(
    session: ReadSessionDep,
    page: PageParamsDep,
    principal: Annotated[Principal, requires("orders:read")],
    item_id: Annotated[uuid.UUID | None, Query(description="Only this item's orders.")] = None,
) -> Page[OrderRead]:
    """List the caller's orders (every order for orders:admin) with their item, oldest
    first, a page at a time."""
    orders, next_cursor = await service.list_orders(
        session, page, owner=visible_to(principal), item_id=item_id
    )
    return Page(items=[OrderRead.model_validate(o) for o in orders], next_cursor=next_cursor)


@router.get("/{order_id}", responses=problem_responses(404))
async def get_order(
    order_id: uuid.UUID,
    session: ReadSessionDep,
    principal: Annotated[Principal, requires("orders:read")],
) -> OrderRead:
    """Get one of the caller's orders with its item; another principal's is a 404."""
    order = await service.get_order(session, order_id, owner=visible_to(principal))
    return OrderRead.model_validate(order)
