"""The orders' background work: confirming an order once it is committed.

The job is enqueued in create_order's own transaction (app/orders/service.py), so it
exists if and only if the order does. It runs at least once: the update only touches
an order not confirmed yet, so a second run changes nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.jobs.worker import Jobs
from app.orders.models import Order
from app.orders.service import CONFIRM_ORDER


async def confirm_order(session: AsyncSession, payload: dict[str, Any]) -> None:
    await session.execute(
        update(Order)
        .where(Order.id == uuid.UUID(payload["order_id"]), Order.confirmed_at.is_(None))
        .values(confirmed_at=func.now())
    )


def register(jobs: Jobs) -> None:
    jobs.job(CONFIRM_ORDER)(confirm_order)
