"""Who is calling: the identity every protected route receives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

# The longest subject stored (orders.owner, idempotency_keys.principal hold 200 or more).
MAX_SUBJECT_LENGTH = 200
# Held by a principal that may read and change what others own (orders, for one).
ADMIN_SUFFIX = ":admin"


# The subjects of API keys' principals start with it (app/core/auth/api_keys.py); a
# token's `sub` that does is refused, or it would own what that key owns.
API_KEY_SUBJECT_PREFIX = "apikey:"
# A caller without an identity (a public route) is recorded as this and its address
# (app/core/idempotency.py): a token's `sub` that starts with it is refused too.
ANONYMOUS_SUBJECT_PREFIX = "anonymous@"
RESERVED_SUBJECT_PREFIXES = (API_KEY_SUBJECT_PREFIX, ANONYMOUS_SUBJECT_PREFIX)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a person or service named by the identity provider's
    token (`sub`), or a machine holding one of this service's API keys."""

    subject: str
    scopes: frozenset[str]
    kind: Literal["token", "api_key"]

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def can_administer(self, resource: str) -> bool:
        """Holds `<resource>:admin`: sees and changes every owner's `resource`."""
        return f"{resource}{ADMIN_SUFFIX}" in self.scopes


class Authenticator(Protocol):
    """What a request needs from the worker's verifiers (app/core/auth/verifier.py).
    A protocol here, so the lifespan state can hold one without importing the
    database models the verifiers read."""

    # Client addresses that failed too often, and until when (time.monotonic()).
    blocked_until: dict[str, float]

    async def principal(
        self,
        authorization: str | None,
        api_key: str | None,
        sessions: async_sessionmaker[AsyncSession],
    ) -> Principal:
        """The caller named by these request headers (API keys are read with
        `sessions`), or NotAuthenticated."""
        ...

    def known(self, authorization: str | None, api_key: str | None) -> bool:
        """Whether this worker verified this credential before (it may have been revoked
        since: `principal` decides), from memory alone."""
        ...

    async def aclose(self) -> None: ...
