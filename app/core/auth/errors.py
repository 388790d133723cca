"""401 and 403, as problem+json. Neither echoes the credential it refuses."""

from __future__ import annotations

from http import HTTPStatus

from app.core.errors import AppError


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
