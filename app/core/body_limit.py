"""Refuse request bodies over a size limit before they are buffered (pure ASGI).

A declared Content-Length over the limit is refused before the app runs. A body
without one (chunked) is counted as it streams in, and refused the moment it
crosses the limit. Either way the client gets 413 problem+json and the worker
never holds more than the limit in memory. The proxy enforces the same limit
(deploy/Caddyfile); this one protects the app wherever it runs.

Not FastAPI's own `max_body_size` (Starlette's RequestBodyLimitMiddleware): when a
declared length is too large, it replaces whatever the app answers with a
text/plain 413, so the error would not be problem+json like every other.
"""

from __future__ import annotations

from fastapi import status
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import problem_response


class BodyTooLarge(HTTPException):
    """An HTTPException, so FastAPI's body parsing lets it through to our handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE, f"The body is larger than {limit} bytes."
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, chunked = _body_headers(scope)
        if declared is not None and declared > self.max_body_size:
            exc = BodyTooLarge(self.max_body_size)
            response = problem_response(Request(scope), exc.status_code, exc.detail)
            await response(scope, receive, send)
            return
        if not chunked:
            # No body, or one of the declared length, which the server enforces.
            await self.app(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size:
                    raise BodyTooLarge(self.max_body_size)
            return message

        await self.app(scope, counting_receive, send)


def _body_headers(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length, if any, and whether the body comes chunked."""
    declared, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server refuses malformed lengths before we see them.
            declared = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked
