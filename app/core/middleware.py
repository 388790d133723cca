"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks contextvars and streaming)."""

from __future__ import annotations

import logging
from time import perf_counter

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import mark_logged
from app.core.principal import Principal
from app.core.request_id import REQUEST_ID_HEADER, accept_or_generate, set_request_id

access_logger = structlog.get_logger("app.access")

# ASGI servers give header names in lower case.
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode("latin-1")
_CACHE_CONTROL = b"cache-control"
# Responses name their caller's data (a principal's orders): no shared cache may keep one
# unless its route says otherwise with a Cache-Control of its own.
_NO_STORE = (_CACHE_CONTROL, b"no-store")

# Container and load-balancer probes hit these every few seconds: at INFO they would
# drown everything else, so a passing probe is logged at DEBUG only. A failing one (5xx)
# is logged like any other failure: a probe that starts failing is news.
PROBE_PATHS = frozenset({"/health", "/health/ready"})


class RequestContextMiddleware:
    """Gives each request an id, returns it as X-Request-ID, binds it to every log line
    of the request, and writes one access line when the request ends. Also answers HEAD
    as GET without the body (FastAPI routes GET only; RFC 9110 asks for both), and sends
    `Cache-Control: no-store` where the response sets none.

    Levels of the access line: ERROR with the traceback when the app raised (the one
    place an unhandled exception is logged), WARNING for another 5xx (its cause was
    logged where it was handled), DEBUG for a passing health probe, INFO otherwise."""

    __slots__ = ("app",)

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = perf_counter()
        incoming = None
        for name, value in scope["headers"]:  # a scan is cheaper than building Headers
            if name == _REQUEST_ID:
                incoming = value.decode("latin-1")
                break
        request_id = accept_or_generate(incoming)
        set_request_id(request_id)  # read by the logging processors and error responses
        request_id_header = (_REQUEST_ID, request_id.encode("latin-1"))
        status = 500  # what the client gets if the app raises before responding
        head = scope["method"] == "HEAD"

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Replace, not add: error responses set the header themselves.
                # Starlette writes header names in lower case, as ASGI servers do.
                headers = [h for h in message.get("headers", ()) if h[0] != _REQUEST_ID]
                headers.append(request_id_header)
                if not any(name == _CACHE_CONTROL for name, _ in headers):
                    headers.append(_NO_STORE)
                message["headers"] = headers
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}  # its Content-Length stays GET's
            await send(message)

        error: Exception | None = None
        try:
            app_scope = {**scope, "method": "GET"} if head else scope
            await self.app(app_scope, receive, send_with_request_id)
        except Exception as exc:
            error = exc
            raise
        finally:
            _log_access(scope, status, started, error)


def _log_access(scope: Scope, status: int, started: float, error: Exception | None) -> None:
    if error is not None:
        log = access_logger.error
        mark_logged(error)  # the server's own report of it is dropped (SkipAlreadyLogged)
    elif status >= 500:
        log = access_logger.warning
    elif scope["path"] in PROBE_PATHS:
        if not access_logger.is_enabled_for(logging.DEBUG):
            return  # the usual case: nothing to build for a line that is not written
        log = access_logger.debug
    else:
        log = access_logger.info
    client = scope.get("client")
    principal = scope.get("auth")  # set by app/core/auth/dependencies.py
    log(
        "request",
        method=scope["method"],
        path=scope["path"],
        status=status,
        duration_ms=round((perf_counter() - started) * 1000, 2),
        client=client[0] if client else None,
        principal=principal.subject if isinstance(principal, Principal) else None,
        exc_info=error,
    )
