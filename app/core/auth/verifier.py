"""The worker's credential verifiers: bearer tokens (when AUTH_ISSUER is set) and API
keys. app/core/auth/dependencies.py calls it once per request."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.auth.api_keys import ApiKeyVerifier
from app.core.auth.errors import NotAuthenticated
from app.core.auth.tokens import TokenVerifier
from app.core.config import Settings
from app.core.principal import Principal


class CredentialVerifier:
    """One per worker (the lifespan makes it): the verifiers and their caches."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = (
            TokenVerifier(
                issuer=settings.auth_issuer,
                audience=settings.auth_audience or "",
                algorithms=settings.auth_algorithms,
                jwks_url=settings.auth_jwks_url,
            )
            if settings.auth_issuer
            else None
        )
        self.api_keys = ApiKeyVerifier()
        self.blocked_until: dict[str, float] = {}

    async def principal(
        self,
        authorization: str | None,
        api_key: str | None,
        sessions: async_sessionmaker[AsyncSession],
    ) -> Principal:
        if authorization is not None and api_key is not None:
            raise NotAuthenticated("Send one credential: a bearer token or an API key.")
        if api_key is not None:
            return await self.api_keys.verify(api_key, sessions)
        if authorization is None:
            raise NotAuthenticated("This request needs a bearer token or an API key.")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("The Authorization header must read 'Bearer <token>'.")
        if self.tokens is None:
            raise NotAuthenticated(
                "Bearer tokens are off (AUTH_ISSUER is not set); send an API key.",
                invalid_token=True,
            )
        return await self.tokens.verify(token.strip())

    def known(self, authorization: str | None, api_key: str | None) -> bool:
        if api_key is not None:
            return self.api_keys.knows(api_key)
        scheme, _, token = (authorization or "").partition(" ")
        return self.tokens is not None and scheme.lower() == "bearer" and self.tokens.knows(token)

    async def aclose(self) -> None:
        if self.tokens is not None:
            await self.tokens.aclose()
