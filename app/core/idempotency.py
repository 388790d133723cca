"""Idempotent POSTs: a client that retries with the same `Idempotency-Key` gets the
first attempt's response back, and nothing is written twice.

The header follows the IETF httpapi draft "The Idempotency-Key HTTP Header Field".
A route opts in with one line, `dependencies=[idempotent]` (after its `requires(...)`:
a key read before authentication is a 500 that says so), on a
router made with `route_class=IdempotentRoute` (tests/test_idempotency_routes.py finds
a POST without the first; a key sent to a route without the second is a 500 that says
so).

How it stays correct without a second store or a lock service:
1. The handler runs first. Its response (status, Location, body) is stored with the key
   in one `INSERT ... ON CONFLICT`, in the request's own transaction, just before the
   commit: a stored response exists if and only if the write committed. A failed
   request stores nothing, so its retry runs again.
2. If the key is taken, the handler's work is rolled back and the stored response is
   sent again, marked `Idempotent-Replayed: true`. The same key with another request
   (method, path, query or body bytes: the same JSON with other spacing or key order
   counts as another; a retry resends its bytes) is a 422. A retry runs the handler
   again, so its effects must live in the transaction: a job it enqueues is rolled back
   with it, an HTTP call it made itself would happen twice.
3. A retry whose handler fails with a domain error (the unique name its first attempt
   wrote: 409) gets the first attempt's response instead, or the 422, the same way.
   Not a 401 or 403: authorization is decided on every attempt.
4. Concurrent duplicates: the second waits on the first's uncommitted row (its key, or
   a row the handler writes) until the first commits, then replays it; never two
   writes. A wait on the key past DB_LOCK_TIMEOUT is a 409 with Retry-After (one on a
   row the handler writes, a 503 like any other lock wait).
Keys are scoped to the caller (the principal) and expire after IDEMPOTENCY_KEY_TTL_SECONDS; an
expired key is stored afresh, and the nightly cleanup removes old ones (EXPIRED_KEYS).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import DateTime, Integer, LargeBinary, String, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.core.auth.dependencies import authenticate
from app.core.db import Base, SessionDep, discard
from app.core.db_errors import sqlstate
from app.core.errors import AppError
from app.core.principal import ANONYMOUS_SUBJECT_PREFIX, Principal
from app.core.rate_limit import client_key
from app.core.state import SettingsDep

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX_LENGTH = 255
# Visible ASCII, spaces inside only: what a header carries unchanged. In the OpenAPI
# document too, so a client (or a fuzzer) knows which keys are refused (422).
KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
# The response headers a replay must repeat; the others are per-attempt (request id).
STORED_HEADERS = ("content-type", "location")
# Storing the key waited past lock_timeout: the store is one indexed insert, which waits
# for a concurrent request that wrote the same key (or, rarely, for a lock on the whole
# table, a migration's). A cancelled store (57014: a statement timeout, pg_cancel_backend)
# is not that: a 503 like any other. DB_LOCK_TIMEOUT stays under DB_STATEMENT_TIMEOUT,
# or the statement's timeout would end the wait first and it would read as a 503.
STILL_RUNNING_SQLSTATES = frozenset({"55P03"})
# Decided on every attempt, never answered by a replay: 401 and 403.
REFUSED = frozenset({HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN})
_KEYED = "app.idempotency.key"


class IdempotencyKey(Base):
    """A key whose request committed, and the response to replay."""

    __tablename__ = "idempotency_keys"

    principal: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY_MAX_LENGTH), primary_key=True)
    # sha256 of the method, path, query and body: what makes a retry "the same request".
    fingerprint: Mapped[str] = mapped_column(String(64))
    # Not indexed: only the nightly cleanup filters on it, deleting about half the table
    # (a sequential scan's job), and an index would cost every keyed write an entry.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    status_code: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)


class IdempotencyKeyReused(AppError):
    status_code = HTTPStatus.UNPROCESSABLE_CONTENT

    def __init__(self) -> None:
        super().__init__(f"This {HEADER} was used for a different request.")


class IdempotencyKeyRepeated(AppError):
    status_code = HTTPStatus.UNPROCESSABLE_CONTENT

    def __init__(self) -> None:
        super().__init__(f"Send one {HEADER}: this request has more than one.")


class IdempotencyKeyInUse(AppError):
    status_code = HTTPStatus.CONFLICT
    headers = {"Retry-After": "1"}  # noqa: RUF012  # read-only, as AppError.headers

    def __init__(self) -> None:
        super().__init__(f"A request with this {HEADER} is still in progress; retry shortly.")


@dataclass(frozen=True, slots=True)
class _Keyed:
    session: AsyncSession
    principal: str
    key: str
    fingerprint: str
    ttl: timedelta


def _fingerprint(request: Request, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), request.url.query.encode()):
        digest.update(part + b"\n")
    digest.update(body)
    return digest.hexdigest()


def _parse_key(raw: str) -> str:
    # The draft sends the key as a structured-field string ("..."); plain tokens work too.
    return raw[1:-1] if len(raw) > 2 and raw[0] == raw[-1] == '"' else raw


async def _read_key(
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
    if len(request.headers.getlist(HEADER)) > 1:
        raise IdempotencyKeyRepeated
    route = request.scope.get("route")
    if not isinstance(route, IdempotentRoute):
        raise RuntimeError(f"{request.url.path}: idempotent needs route_class=IdempotentRoute")
    if route.keyed_before_authentication:
        raise RuntimeError(
            f"{request.url.path}: idempotent runs before authentication here; put"
            " requires(...) before it in dependencies=[...]"
        )
    principal = request.scope.get("auth")  # set by authentication, which runs first
    request.scope[_KEYED] = _Keyed(
        session=session,
        # Without an identity (a route outside /api/v1), each client address has its own
        # keys: one caller's key must not replay another's response.
        principal=(
            principal.subject
            if isinstance(principal, Principal)
            else f"{ANONYMOUS_SUBJECT_PREFIX}{client_key(request)}"
        ),
        key=_parse_key(key),
        fingerprint=_fingerprint(request, await request.body()),
        ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds),
    )


# scope="function": the request's own session, committed after IdempotentRoute stores the key.
idempotent = Depends(_read_key, scope="function")

# The key with its response, over an expired key only: RETURNING nothing means the key
# is taken. Plain SQL on the session's connection (still wrapped, so errors classify as
# any other): the one statement a keyed request adds has nothing to compile.
_STORE = """
INSERT INTO idempotency_keys AS stored (principal, key, fingerprint, status_code, headers, body)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (principal, key) DO UPDATE SET
    fingerprint = excluded.fingerprint,
    created_at = now(),
    status_code = excluded.status_code,
    headers = excluded.headers,
    body = excluded.body
WHERE stored.created_at < now() - $7::interval
RETURNING true
"""


async def _store(keyed: _Keyed, response: Response) -> bool:
    """Store the key and `response`; False if the key is taken (after waiting for a
    concurrent request that holds it to commit or roll back)."""
    if not hasattr(response, "body"):
        raise RuntimeError("an idempotent route must return a response with a body to replay")
    headers = {name: response.headers[name] for name in STORED_HEADERS if name in response.headers}
    connection = await keyed.session.connection()
    try:
        result = await connection.exec_driver_sql(
            _STORE,
            (
                keyed.principal,
                keyed.key,
                keyed.fingerprint,
                response.status_code,
                json.dumps(headers),
                bytes(response.body),
                keyed.ttl,
            ),
        )
    except DBAPIError as exc:
        if sqlstate(exc) in STILL_RUNNING_SQLSTATES:
            raise IdempotencyKeyInUse from None
        raise
    return result.first() is not None


async def _stored_response(keyed: _Keyed) -> Response | None:
    """The response stored for the key, to send again; None if there is none (or it
    expired). IdempotencyKeyReused if the key was stored for another request."""
    stored = (
        await keyed.session.execute(
            select(
                IdempotencyKey.fingerprint,
                IdempotencyKey.status_code,
                IdempotencyKey.headers,
                IdempotencyKey.body,
            ).where(
                IdempotencyKey.principal == keyed.principal,
                IdempotencyKey.key == keyed.key,
                IdempotencyKey.created_at >= func.now() - keyed.ttl,
            )
        )
    ).first()
    if stored is None:
        return None
    if stored.fingerprint != keyed.fingerprint:
        raise IdempotencyKeyReused
    if stored.status_code is None:  # a key stored without a response: never, but never replay None
        raise IdempotencyKeyInUse
    replay = Response(stored.body, status_code=stored.status_code, headers=stored.headers)
    replay.headers[REPLAYED_HEADER] = "true"
    return replay


def _calls_in_order(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    """The dependencies' callables in the order FastAPI runs them: each one's own first."""
    for dependency in dependant.dependencies:
        yield from _calls_in_order(dependency)
        yield dependency.call


class IdempotentRoute(APIRoute):
    """Stores a keyed request's response with its key, in its transaction, and sends
    replays.

    FastAPI builds the whole response inside the handler this wraps, before the
    function-scoped SessionDep commits: so the response is written in the same
    transaction as the data, and a replay can still discard the handler's writes."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        # The key is filed under the caller that authentication found: read before it,
        # on a route that authenticates, it would be filed as anonymous, and another
        # caller from the same address could replay this one's response. Known only
        # once the route is included where it is served (under /api/v1, authentication
        # comes first): _read_key refuses such a route's keys, and
        # tests/test_idempotency_routes.py finds it.
        calls = list(_calls_in_order(self.dependant))
        self.keyed_before_authentication = (
            _read_key in calls
            and authenticate in calls
            and calls.index(_read_key) < calls.index(authenticate)
        )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_idempotently(request: Request) -> Response:
            try:
                response = await handle(request)
            except AppError as exc:
                keyed = request.scope.get(_KEYED)
                # A refused caller is refused again: a replay would hand a token without
                # the scope (a dependency resolved after `idempotent`) the stored response.
                if not isinstance(keyed, _Keyed) or exc.status_code in REFUSED:
                    raise
                # A retry may fail where its first attempt succeeded (the name it wrote is
                # taken now): the first response wins. The failed transaction goes first.
                await discard(keyed.session)
                replay = await _stored_response(keyed)
                if replay is None:
                    raise
                return replay
            keyed = request.scope.get(_KEYED)
            if not isinstance(keyed, _Keyed) or await _store(keyed, response):
                return response
            replay = await _stored_response(keyed)
            await discard(keyed.session)  # the key was taken: none of this request is kept
            if replay is None:  # deleted since the insert: retryable
                raise IdempotencyKeyInUse
            return replay

        return handle_idempotently


# Keys stored before :cutoff (their TTL past), at most :batch of them: the periodic
# cleanup's statement (app/core/jobs/cleanup.py), run until it deletes fewer. Not indexed
# on created_at (a keyed write would pay for it): each batch scans from the table's start,
# where the oldest rows are. The cutoff again outside: a key a request stored afresh
# while the DELETE waited for its row is checked again as re-stored, and kept, rather
# than relying on the server to recheck a TID scan's ctid after such a wait.
EXPIRED_KEYS = text("""
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys WHERE created_at < :cutoff LIMIT :batch))
    AND created_at < :cutoff
""")
