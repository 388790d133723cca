"""Errors as RFC 9457 problem details, and every exception handler in one place.

Domain code raises subclasses of `AppError`; this module turns them, FastAPI's own
HTTP and validation errors, and unavailable dependencies into
`application/problem+json`. app/core/problems.py documents the same bodies in the
OpenAPI schema.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.db_errors import is_transient, is_transient_sqlstate, sqlstate
from app.core.request_id import REQUEST_ID_HEADER, current_request_id

PROBLEM_JSON = "application/problem+json"
RETRY_UNAVAILABLE_AFTER_SECONDS = 5

# Failures of a dependency reached without SQLAlchemy's wrapping (or before it: asyncpg
# connecting): refused or reset connections, DNS failures, timeouts, an unreachable host
# or network. SQLAlchemy's DBAPIError is classified by its SQLSTATE instead
# (app/core/db_errors.py), and its pool's TimeoutError means the pool is exhausted.
# Redis errors never get here: Redis is optional and OptionalRedis absorbs them.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EADDRNOTAVAIL,
    }
)
# What asyncio raises when every address of a host failed, each differently (localhost:
# ::1 and 127.0.0.1 both refused): a plain OSError without an errno.
_EVERY_ADDRESS_FAILED = "Multiple exceptions: "


def is_unreachable(exc: OSError) -> bool:
    """A network failure reaching a dependency, not another OSError (a file, a
    permission): that one is a bug, and stays a 500 with its traceback logged."""
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    if exc.errno is None:
        return str(exc).startswith(_EVERY_ADDRESS_FAILED)
    return exc.errno in _NETWORK_ERRNOS


logger = structlog.get_logger(__name__)


class AppError(Exception):
    """Base for errors the client can act on; subclasses set the status and say what went wrong."""

    status_code: int = HTTPStatus.BAD_REQUEST
    headers: Mapping[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def extensions(self) -> dict[str, Any]:
        """Extra members of the problem body (e.g. `errors`); none by default."""
        return {}


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


def unavailable_response(request: Request) -> JSONResponse:
    return problem_response(
        request,
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "A service this request needs is unavailable; try again shortly.",
        headers={"Retry-After": str(RETRY_UNAVAILABLE_AFTER_SECONDS)},
    )


def allowed_methods(request: Request) -> str:
    """The methods the OpenAPI document lists for this path (plus HEAD, served for
    every GET). Starlette's own 405 names only one route's methods, and FastAPI
    makes one route per method; the document is what clients read."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), request.url.path):
            methods.update(method.upper() for method in operations)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)  # noqa: S101  # registered for AppError only
    return problem_response(
        request, exc.status_code, exc.detail, headers=exc.headers, **exc.extensions()
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    headers = dict(exc.headers or {})
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        headers["Allow"] = allowed_methods(request)
    return problem_response(request, exc.status_code, exc.detail, headers=headers)


def _field_error(error: Mapping[str, Any]) -> dict[str, Any]:
    location, *path = error["loc"]
    if error["type"] == "json_invalid":
        # pydantic puts the character offset in the path; the client needs to know
        # the body as a whole is unreadable.
        return {"location": str(location), "field": None, "detail": "Body is not valid JSON."}
    return {
        "location": str(location),
        "field": ".".join(str(part) for part in path) or None,
        "detail": error["msg"],
    }


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    # Field and reason only: the submitted values are never echoed back (they may be secrets).
    return problem_response(
        request,
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "The request is invalid; see errors.",
        errors=[_field_error(error) for error in exc.errors()],
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, sa_exc.DBAPIError)  # noqa: S101
    if not is_transient(exc):
        raise exc  # a bug: the generic 500 path logs it once and answers 500
    logger.warning("database unavailable", error=type(exc).__name__, sqlstate=sqlstate(exc))
    return unavailable_response(request)


async def _driver_error(request: Request, exc: Exception) -> JSONResponse:
    # asyncpg's own error, from the session's driver connection (app/core/db.py's
    # driver_connection: a job's enqueue), classified as a DBAPIError is.
    code = getattr(exc, "sqlstate", None)
    if not isinstance(code, str) or not is_transient_sqlstate(code):
        raise exc
    logger.warning("database unavailable", error=type(exc).__name__, sqlstate=code)
    return unavailable_response(request)


async def _dependency_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("dependency unavailable", error=type(exc).__name__)
    return unavailable_response(request)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, OSError) and is_unreachable(exc):
        return await _dependency_unavailable(request, exc)
    # Not a network failure: on to the 500 handler, and the access line's traceback.
    raise exc


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    # The access middleware has logged the exception once, with its traceback and the
    # request id; Starlette re-raises it and logging drops the server's repeat
    # (SkipAlreadyLogged). The client never sees exception text.
    return problem_response(
        request, HTTPStatus.INTERNAL_SERVER_ERROR, "An internal error occurred."
    )


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(asyncpg.PostgresError, _driver_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(sa_exc.TimeoutError, _dependency_unavailable)
    app.add_exception_handler(Exception, _unhandled_error)
