"""API keys for machines: created and revoked with `python -m app.core.auth.keys`
(`make api-key`), as the owner role in production, sent in the `X-API-Key` header. The
api's role reads the table and writes `last_used_at`, nothing else (migration bc7f196e296a).

A key reads `sak_<id>_<secret>`: the prefix lets secret scanners find a leaked one, the
id finds its row, and only a SHA-256 of the secret is stored. The secret is 256 random
bits, so a fast hash is as safe as a password hash would be, without costing each
request one; the comparison is constant-time.

Each worker keeps the keys it verified for REVALIDATE_SECONDS, then reads the row
again: a revocation or an expiry reaches every worker within that time. The row's
`last_used_at` is written after those reads, at most once per LAST_USED_PRECISION, never
once per request, and in a transaction of its own: a database that refuses writes (a
replica after a failover) still verifies keys. While the database is unreachable, a key
verified in the last STALE_IF_ERROR_SECONDS keeps working (reads served from the cache
keep answering); revocations wait for the database to return.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import DateTime, LargeBinary, String, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from app.core.auth.errors import NotAuthenticated
from app.core.db import Base
from app.core.db_errors import is_transient, sqlstate
from app.core.principal import API_KEY_SUBJECT_PREFIX, Principal

PREFIX = "sak"
HEADER = "X-API-Key"
KEY_FORMAT = re.compile(rf"^{PREFIX}_(?P<id>[0-9a-f]{{16}})_(?P<secret>[A-Za-z0-9_-]{{43}})$")
REVALIDATE_SECONDS = 5.0
STALE_IF_ERROR_SECONDS = 300.0
LAST_USED_PRECISION = timedelta(minutes=1)
# Bounds the per-worker cache; past it the cache starts over (each key is read again).
MAX_CACHED_KEYS = 10_000

logger = structlog.get_logger(__name__)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    # Who holds the key ("billing-worker"); the principal's subject is "apikey:<name>".
    name: Mapped[str] = mapped_column(String(100), unique=True)
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(100)))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True, slots=True)
class NewKey:
    row_id: str
    secret_sha256: bytes
    plaintext: str  # shown once, never stored


def generate_key() -> NewKey:
    row_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(row_id, _sha256(secret), f"{PREFIX}_{row_id}_{secret}")


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def subject_of(name: str) -> str:
    return f"{API_KEY_SUBJECT_PREFIX}{name}"


@dataclass(frozen=True, slots=True)
class _Verified:
    secret_sha256: bytes
    principal: Principal
    expires_at: datetime | None
    checked_at: float  # time.monotonic() of the database read
    last_used_at: datetime | None  # as read then


class ApiKeyVerifier:
    """Turns an `X-API-Key` value into a Principal, or refuses it with a 401."""

    def __init__(self) -> None:
        self._cache: dict[str, _Verified] = {}

    def knows(self, presented: str) -> bool:
        """Whether this worker has read the key's row and the secret is its own: checked
        from memory, no lookup (a known id with a guessed secret is not known)."""
        match = KEY_FORMAT.fullmatch(presented)
        if match is None:
            return False
        entry = self._cache.get(match["id"])
        return entry is not None and hmac.compare_digest(
            entry.secret_sha256, _sha256(match["secret"])
        )

    async def verify(self, presented: str, sessions: async_sessionmaker[AsyncSession]) -> Principal:
        match = KEY_FORMAT.fullmatch(presented)
        if match is None:
            raise _refused("is not in this service's format")
        row_id, secret = match["id"], match["secret"]
        entry, fresh = await self._entry(row_id, sessions)
        if entry is None or not hmac.compare_digest(entry.secret_sha256, _sha256(secret)):
            raise _refused("is unknown or revoked")
        if entry.expires_at is not None and entry.expires_at <= datetime.now(UTC):
            raise _refused("has expired")
        # A use is recorded once the secret matched (a wrong one is no use of the key),
        # on a database read only, and at most once per LAST_USED_PRECISION.
        last = entry.last_used_at
        if fresh and (last is None or last < datetime.now(UTC) - LAST_USED_PRECISION):
            await _record_use(sessions, row_id)
        return entry.principal

    async def _entry(
        self, row_id: str, sessions: async_sessionmaker[AsyncSession]
    ) -> tuple[_Verified | None, bool]:
        """The key's row, cached or read; True if read from the database just now."""
        now = time.monotonic()
        cached = self._cache.get(row_id)
        if cached is not None and now - cached.checked_at < REVALIDATE_SECONDS:
            return cached, False
        try:
            fresh = await self._read(sessions, row_id, now)
        except (DBAPIError, OSError) as error:
            unreachable = isinstance(error, OSError) or is_transient(error)
            recent = cached is not None and now - cached.checked_at < STALE_IF_ERROR_SECONDS
            if unreachable and recent:
                return cached, False
            raise
        if fresh is None:
            self._cache.pop(row_id, None)
            return None, True
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[row_id] = fresh
        return fresh, True

    async def _read(
        self, sessions: async_sessionmaker[AsyncSession], row_id: str, now: float
    ) -> _Verified | None:
        async with sessions() as session, session.begin():
            row = (
                await session.execute(
                    select(
                        ApiKey.name,
                        ApiKey.secret_sha256,
                        ApiKey.scopes,
                        ApiKey.expires_at,
                        ApiKey.last_used_at,
                    ).where(ApiKey.id == row_id, ApiKey.revoked_at.is_(None))
                )
            ).one_or_none()
            if row is None:
                return None
        principal = Principal(
            subject=subject_of(row.name), scopes=frozenset(row.scopes), kind="api_key"
        )
        return _Verified(row.secret_sha256, principal, row.expires_at, now, row.last_used_at)


async def _record_use(sessions: async_sessionmaker[AsyncSession], row_id: str) -> None:
    """Bookkeeping: a transient failure (a read-only database, a lost connection) is
    logged, and the key it was recorded for still verified."""
    try:
        async with sessions() as session, session.begin():
            await session.execute(
                update(ApiKey).where(ApiKey.id == row_id).values(last_used_at=func.now())
            )
    except DBAPIError as error:
        if not is_transient(error):
            raise
        logger.warning("api key last use not recorded", sqlstate=sqlstate(error))


def _refused(reason: str) -> NotAuthenticated:
    return NotAuthenticated(f"The API key {reason}.", invalid_token=True)
