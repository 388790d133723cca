"""401 and 403, as problem+json. Neither echoes the credential it refuses."""

from __future__ import annotations

from http import HTTPStatus

from app.core.errors import RETRY_UNAVAILABLE_AFTER_SECONDS, AppError


class NotAuthenticated(AppError):
    """No credential, or one that does not verify: 401 with the RFC 6750 challenge."""

    status_code = HTTPStatus.UNAUTHORIZED

    def __init__(self, detail: str, *, invalid_token: bool = False) -> None:
        super().__init__(detail)
        # RFC 6750 3.1: error="invalid_token" when a token was sent and refused; a
        # request without credentials gets the bare challenge.
        challenge = 'Bearer error="invalid_token"' if invalid_token else "Bearer"
        self.headers = {"WWW-Authenticate": challenge}


class MissingScope(AppError):
    """Authenticated, but without a scope this route requires: 403 naming it."""

    status_code = HTTPStatus.FORBIDDEN

    def __init__(self, scopes: list[str]) -> None:
        super().__init__(f"This request needs the scope {' and '.join(scopes)}.")
        self.headers = {
            "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(scopes)}"'
        }


class IssuerUnavailable(AppError):
    """A token arrived, and this worker has never fetched the issuer's keys to check it
    with (the provider was unreachable since the worker started): 503, not the 401 that
    would tell the client its token is bad. Not counted as a failed authentication."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    headers = {"Retry-After": str(RETRY_UNAVAILABLE_AFTER_SECONDS)}  # noqa: RUF012  # read-only

    def __init__(self) -> None:
        super().__init__("The identity provider's keys could not be fetched; try again shortly.")
