"""What can go wrong with items, in domain terms; core/errors.py turns these into HTTP."""

from __future__ import annotations

import uuid
from http import HTTPStatus

from app.core.errors import AppError


class ItemNotFound(AppError):
    status_code = HTTPStatus.NOT_FOUND

    def __init__(self, item_id: uuid.UUID) -> None:
        super().__init__(f"Item {item_id} does not exist.")


class ItemNameTaken(AppError):
    status_code = HTTPStatus.CONFLICT

    def __init__(self) -> None:
        super().__init__("An item with this name already exists.")


class ItemInUse(AppError):
    status_code = HTTPStatus.CONFLICT

    def __init__(self) -> None:
        super().__init__("Other records (such as orders) refer to this item; delete them first.")
