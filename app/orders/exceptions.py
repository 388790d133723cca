"""What can go wrong with orders, in domain terms; core/errors.py turns these into HTTP."""

from __future__ import annotations

import uuid
from http import HTTPStatus
from typing import Any

from fastapi import status

from app.core.errors import AppError


class OrderNotFound(AppError):
    status_code = HTTPStatus.NOT_FOUND

    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"Order {order_id} does not exist.")


class UnknownItem(AppError):
    """The body names an item that does not exist: the body is invalid (422)."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT

    def __init__(self, item_id: uuid.UUID) -> None:
        super().__init__(f"Item {item_id} does not exist.")

    def extensions(self) -> dict[str, Any]:
        return {"errors": [{"location": "body", "field": "item_id", "detail": self.detail}]}
