"""Core's own tables, imported here so that Alembic's autogenerate sees them
(`load_all_models` imports every `app/<package>/models.py`, core's too)."""

from app.core.auth.api_keys import ApiKey
from app.core.idempotency import IdempotencyKey
from app.core.pending_deletes import PendingCacheDelete

__all__ = ["ApiKey", "IdempotencyKey", "PendingCacheDelete"]
