"""Idempotent POSTs: a client that retries with the same `Idempotency-Key` gets the
first attempt's response back, and nothing is written twice.

The header follows the IETF httpapi draft "The Idempotency-Key HTTP Header Field".
A route opts in with one line, `dependencies=[idempotent]`, on a router made with
`route_class=IdempotentRoute` (tests/test_idempotency_routes.py finds a POST without
the first; a key sent to a route without the second is a 500 that says so).

How it stays correct without a second store or a lock service:
1. Before the handler runs, the key is claimed in the request's own transaction
   (`INSERT ... ON CONFLICT`). A concurrent request with the same key waits on that
   row until the first transaction ends, at most DB_LOCK_TIMEOUT, then gets 409.
2. After the handler, its response (status, Location, body) is written to the same
   row, still before the commit: a stored response exists if and only if the write
   committed. A failed request rolls back its claim too, so a retry runs it again.
3. A retry finds the stored response and gets it again, marked `Idempotent-Replayed:
   true`. The same key with another request (method, path, query or body) is a 422.
Keys are scoped to the caller (the principal) and expire after IDEMPOTENCY_KEY_TTL_SECONDS; an
expired key is claimed afresh, and `delete_expired_keys` removes old ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import DateTime, Integer, LargeBinary, String, delete, func, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, SessionDep
from app.core.db_errors import sqlstate
from app.core.errors import AppError
from app.core.principal import Principal
from app.core.state import SettingsDep

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX_LENGTH = 255
# Visible ASCII, spaces inside only: what a header carries unchanged. In the OpenAPI
# document too, so a client (or a fuzzer) knows which keys are refused (422).
KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
# The response headers a replay must repeat; the others are per-attempt (request id).
STORED_HEADERS = ("content-type", "location")
# The claim waited for a concurrent request's transaction past lock_timeout, or past
# statement_timeout when that fires first: the claim itself is one indexed insert.
STILL_RUNNING_SQLSTATES = frozenset({"55P03", "57014"})
# The key space of a request without an identity (a route outside /api/v1).
ANONYMOUS = "anonymous"
_CLAIM = "app.idempotency.claim"


class IdempotencyKey(Base):
    """A claimed key and, once its request committed, the response to replay."""

    __tablename__ = "idempotency_keys"

    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), primary_key=True)
    # sha256 of the method, path, query and body: what makes a retry "the same request".
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
    status_code: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)


class IdempotencyKeyReused(AppError):
    status_code = HTTPStatus.UNPROCESSABLE_CONTENT

    def __init__(self) -> None:
        super().__init__(f"This {HEADER} was used for a different request.")


class IdempotencyKeyInUse(AppError):
    status_code = HTTPStatus.CONFLICT
    headers = {"Retry-After": "1"}  # noqa: RUF012  # read-only, as AppError.headers

    def __init__(self) -> None:
        super().__init__(f"A request with this {HEADER} is still in progress; retry shortly.")


@dataclass(frozen=True, slots=True)
class _Claim:
    session: AsyncSession
    principal: str
    key: str


class _Replay(Exception):  # control flow, never reaches a handler
    def __init__(self, response: Response) -> None:
        self.response = response


def _fingerprint(request: Request, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), request.url.query.encode()):
        digest.update(part + b"\n")
    digest.update(body)
    return digest.hexdigest()


def _parse_key(raw: str) -> str:
    # The draft sends the key as a structured-field string ("..."); plain tokens work too.
    return raw[1:-1] if len(raw) > 2 and raw[0] == raw[-1] == '"' else raw


async def _claim(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=KEY_MAX_LENGTH,
            pattern=KEY_PATTERN,
            description="Makes a retry of this request safe: the same key and request "
            "get the first response again (`Idempotent-Replayed: true`), with nothing "
            "written twice. A unique value per operation, e.g. a UUID.",
        ),
    ] = None,
) -> None:
    if key is None:
        return
    if not isinstance(request.scope.get("route"), IdempotentRoute):
        raise RuntimeError(f"{request.url.path}: idempotent needs route_class=IdempotentRoute")
    principal = request.scope.get("auth")  # set by authentication, which runs first
    owner = principal.subject if isinstance(principal, Principal) else ANONYMOUS
    claim = _Claim(session, owner, _parse_key(key))
    fingerprint = _fingerprint(request, await request.body())
    expired = func.now() - timedelta(seconds=settings.idempotency_key_ttl_seconds)
    fresh = {"fingerprint": fingerprint, "created_at": func.now()}
    statement = (
        insert(IdempotencyKey)
        .values(principal=claim.principal, key=claim.key, **fresh)
        .on_conflict_do_update(
            index_elements=[IdempotencyKey.principal, IdempotencyKey.key],
            set_={**fresh, "status_code": None, "headers": None, "body": None},
            where=IdempotencyKey.created_at < expired,
        )
        .returning(IdempotencyKey.key)
    )
    try:
        claimed = (await session.execute(statement)).first() is not None
    except DBAPIError as exc:
        if sqlstate(exc) in STILL_RUNNING_SQLSTATES:
            raise IdempotencyKeyInUse from None
        raise
    if claimed:
        request.scope[_CLAIM] = claim
        return
    stored = (
        await session.execute(
            select(IdempotencyKey).where(
                IdempotencyKey.principal == claim.principal, IdempotencyKey.key == claim.key
            )
        )
    ).scalar_one()
    if stored.fingerprint != fingerprint:
        raise IdempotencyKeyReused
    if stored.status_code is None:  # committed without a response: never, but never replay None
        raise IdempotencyKeyInUse
    replay = Response(stored.body, status_code=stored.status_code, headers=stored.headers)
    replay.headers[REPLAYED_HEADER] = "true"
    raise _Replay(replay)


# scope="function": the claim runs on the request's session, before its commit.
idempotent = Depends(_claim, scope="function")


async def _store(claim: _Claim, response: Response) -> None:
    headers = {name: response.headers[name] for name in STORED_HEADERS if name in response.headers}
    await claim.session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.principal == claim.principal, IdempotencyKey.key == claim.key)
        .values(status_code=response.status_code, headers=headers, body=bytes(response.body))
    )


class IdempotentRoute(APIRoute):
    """Stores a claimed request's response in its transaction, and sends replays.

    FastAPI builds the whole response inside the handler this wraps, before the
    function-scoped SessionDep commits: so the response is written in the same
    transaction as the data."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_idempotently(request: Request) -> Response:
            try:
                response = await handle(request)
            except _Replay as replay:
                return replay.response
            claim = request.scope.get(_CLAIM)
            if isinstance(claim, _Claim) and hasattr(response, "body"):
                await _store(claim, response)
            return response

        return handle_idempotently


async def delete_expired_keys(session: AsyncSession, ttl_seconds: float) -> int:
    """Remove keys older than `ttl_seconds`; returns how many. For the periodic cleanup."""
    result = await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.created_at < func.now() - timedelta(seconds=ttl_seconds)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
