"""Errors as RFC 9457 problem details, and every exception handler in one place.

Domain code raises subclasses of `AppError`; this module turns them, and
FastAPI's own HTTP and validation errors, into `application/problem+json`.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.request_id import REQUEST_ID_HEADER, current_request_id

PROBLEM_JSON = "application/problem+json"

# What a request sees when a dependency it needs (today, Postgres) is down or
# unreachable: refused or reset connections, DNS failures, timeouts, and
# SQLAlchemy's wrappers of them (pool exhausted, connection lost mid-query).
# Redis errors never get here: Redis is optional and its callers fall back.
DEPENDENCY_UNAVAILABLE: tuple[type[Exception], ...] = (
    ConnectionError,
    socket.gaierror,
    TimeoutError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)
RETRY_UNAVAILABLE_AFTER_SECONDS = 5

logger = structlog.get_logger(__name__)


class AppError(Exception):
    """Base for errors the client can act on; subclasses set the status and say what went wrong."""

    status_code: int = HTTPStatus.BAD_REQUEST
    headers: Mapping[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def problem_response(
    request: Request,
    status_code: int,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """A problem+json response carrying the request id, in body and header."""
    status_code = int(status_code)  # HTTPStatus members would leak into logs as enums
    request_id = current_request_id()
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status_code).phrase,
        "status": status_code,
        "instance": request.url.path,
        "request_id": request_id,
    }
    if detail:
        body["detail"] = detail
    body.update(extensions)
    # The middleware adds the header to what passes through it; a 500 is sent by
    # Starlette's outermost middleware, outside it, so the header is set here too.
    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})} if request_id else headers
    return JSONResponse(body, status_code=status_code, headers=all_headers, media_type=PROBLEM_JSON)


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)  # noqa: S101  # registered for AppError only
    return problem_response(request, exc.status_code, exc.detail, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    return problem_response(request, exc.status_code, exc.detail, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    # Field and reason only: the submitted values are never echoed back (they may be secrets).
    errors = [
        {
            "location": str(error["loc"][0]),
            "field": ".".join(str(part) for part in error["loc"][1:]),
            "detail": error["msg"],
        }
        for error in exc.errors()
    ]
    return problem_response(
        request,
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "The request is invalid; see errors.",
        errors=errors,
    )


async def _dependency_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("dependency unavailable", error=type(exc).__name__)
    return problem_response(
        request,
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "A service this request needs is unavailable; try again shortly.",
        headers={"Retry-After": str(RETRY_UNAVAILABLE_AFTER_SECONDS)},
    )


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response, and the server logs its
    # traceback (with the request id); the client never sees exception text.
    return problem_response(
        request, HTTPStatus.INTERNAL_SERVER_ERROR, "An internal error occurred."
    )


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for exc_class in DEPENDENCY_UNAVAILABLE:
        app.add_exception_handler(exc_class, _dependency_unavailable)
    app.add_exception_handler(Exception, _unhandled_error)
