"""Authentication and authorization as FastAPI dependencies.

Every router under /api/v1 is included with `Depends(authenticate)` (app/core/
application.py): a route nobody protected still needs an identity. Each route then
names the scopes it needs, in one line, which also puts them in the OpenAPI document:

    @router.get("/{item_id}", dependencies=[requires("items:read")])
    async def read_item(...)

    async def read_order(..., principal: Annotated[Principal, requires("orders:read")])

Two credentials are accepted: `Authorization: Bearer <JWT>` from the identity provider
(when AUTH_ISSUER is set) and `X-API-Key: sak_...` for machines. Nothing is read from
the query string, where tokens end up in logs and browser histories.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Request, Security, params
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes
from redis.asyncio import Redis

from app.core.auth.api_keys import HEADER as API_KEY_HEADER
from app.core.auth.errors import MissingScope, NotAuthenticated
from app.core.domains import import_from_every_domain
from app.core.principal import ADMIN_SUFFIX, Authenticator, Principal
from app.core.rate_limit import RateLimited, client_key, hit
from app.core.redis import OptionalRedis
from app.core.state import app_state

# The request scope's key for the principal (Starlette's convention for authentication),
# read by the access log and the rate limiter.
SCOPE_KEY = "auth"
# Blocked addresses each worker remembers before it forgets those whose time is up (an
# address is otherwise forgotten only when it comes back).
BLOCKED_PRUNE_AT = 1_000

# Declared for the OpenAPI document ("Authorize" in /docs, generated clients); the
# credentials are read by `authenticate`, which runs once per request.
bearer_scheme = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="An access token from the identity provider named by AUTH_ISSUER.",
    auto_error=False,
)
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="apiKey",
    description="A key made with `make api-key` (docs/auth.md).",
    auto_error=False,
)


def _check_not_blocked(authenticator: Authenticator, client: str) -> None:
    until = authenticator.blocked_until.get(client)
    if until is None:
        return
    remaining = until - time.monotonic()
    if remaining > 0:
        raise RateLimited(max(int(remaining), 1))
    del authenticator.blocked_until[client]


async def _record_failure(
    authenticator: Authenticator, client: str, redis: OptionalRedis, per_minute: int
) -> None:
    """Failed authentications per client address, counted in Redis across workers.
    Past RATE_LIMIT_AUTH_FAILURES a minute the address gets 429 for any credential this
    worker has not verified before, without looking it up, so guessing keys is slow.
    Each worker remembers the addresses it saw go over, so a request that authenticates
    costs no Redis round trip."""
    if per_minute == 0:
        return

    async def count(connection: Redis) -> int | None:
        return await hit(connection, f"authfail:{client}", per_minute)

    retry_after = await redis.run(count)
    if retry_after is not None:
        blocked, now = authenticator.blocked_until, time.monotonic()
        if len(blocked) >= BLOCKED_PRUNE_AT:  # many addresses: forget those whose time is up
            for address in [address for address, until in blocked.items() if until <= now]:
                del blocked[address]
        blocked[client] = now + retry_after
        raise RateLimited(retry_after)


def _one(request: Request, header: str) -> str | None:
    """The header's value; two of them are refused, as a token with an API key is: which
    one a proxy or a framework reads first is not something to authenticate on."""
    values = request.headers.getlist(header)
    if len(values) > 1:
        raise NotAuthenticated("Send one credential: a bearer token or an API key.")
    return values[0] if values else None


async def authenticate(request: Request) -> Principal:
    """The caller, or a 401 (429 for an address that keeps failing). FastAPI runs it
    once per request, however many dependencies need it."""
    state = app_state(request)
    authenticator = state["auth"]
    client = client_key(request)
    try:
        authorization, api_key = _one(request, "authorization"), _one(request, API_KEY_HEADER)
        # A blocked address is answered from memory, so its guesses cost no lookup: a
        # credential this worker verified before still gets in (a client behind the same
        # NAT as whoever guesses), anything else gets 429.
        blocked = client in authenticator.blocked_until  # one dict lookup when not
        if blocked and not authenticator.known(authorization, api_key):
            _check_not_blocked(authenticator, client)
        principal = await authenticator.principal(authorization, api_key, state["session_factory"])
    except NotAuthenticated:
        _check_not_blocked(authenticator, client)
        per_minute = state["settings"].rate_limit_auth_failures
        await _record_failure(authenticator, client, state["redis"], per_minute)
        raise
    request.scope[SCOPE_KEY] = principal
    return principal


async def authorize(
    security_scopes: SecurityScopes,
    principal: Annotated[Principal, Depends(authenticate)],
    # Not read: declared so the OpenAPI document lists both schemes with their scopes.
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    _api_key: Annotated[str | None, Depends(api_key_scheme)],
) -> Principal:
    missing = [scope for scope in security_scopes.scopes if not principal.has(scope)]
    if missing:
        raise MissingScope(missing)
    return principal


# Every scope a `requires` names, as the routers are imported: what a credential's scopes
# are checked against when it is made (app/core/auth/keys.py), so a typo is refused there
# instead of becoming a key that every route answers with 403.
_declared_scopes: set[str] = set()


def requires(*scopes: str) -> params.Security:
    """A dependency that lets in only principals holding every one of `scopes` (403
    otherwise), and gives the handler the Principal."""
    _declared_scopes.update(scopes)
    security: params.Security = Security(authorize, scopes=list(scopes))
    return security


def declared_scopes() -> frozenset[str]:
    """The scopes the service's routes require (every domain's router, imported), and
    `<resource>:admin` for each of their resources (Principal.can_administer)."""
    import_from_every_domain("router")
    resources = {scope.partition(":")[0] for scope in _declared_scopes}
    return frozenset(_declared_scopes | {f"{r}{ADMIN_SUFFIX}" for r in resources})


PrincipalDep = Annotated[Principal, Depends(authenticate)]
