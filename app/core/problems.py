"""The OpenAPI side of app/core/errors.py: one `Problem` schema, reused by every
documented error response, so the document says what the API really sends."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from app.core.errors import PROBLEM_JSON


class FieldError(BaseModel):
    location: str = Field(description="Where the bad value is: body, query, path or header.")
    field: str | None = Field(description="The field's dotted path; null for the whole part.")
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem. The submitted values are never echoed back."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str
    request_id: str | None
    errors: list[FieldError] | None = Field(
        default=None, description="Present on 422: one entry per invalid value."
    )


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
        "required": True,
    }
}
_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read at all (for example, it is not UTF-8).",
    401: "No credential, or one that does not verify (expired, revoked, another issuer).",
    403: "The credential lacks a scope this operation requires; `detail` names it.",
    404: "No such resource.",
    409: "The request conflicts with the current state (e.g. a unique name is taken).",
    413: "The body is larger than MAX_BODY_SIZE.",
    422: "The request is invalid; `errors` lists each invalid field.",
    429: "Too many requests from this client; wait Retry-After seconds.",
    500: "An internal error; the request id identifies it in the logs.",
    503: "A dependency is unavailable; try again after Retry-After seconds.",
}
_CHALLENGE = {
    "WWW-Authenticate": {
        "description": 'The RFC 6750 challenge: `Bearer`, with `error="invalid_token"` or'
        ' `error="insufficient_scope"` when a credential was refused.',
        "schema": {"type": "string"},
        "required": True,
    }
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: _CHALLENGE,
    403: _CHALLENGE,
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}
_SCHEMA_REF = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, for a route or a router:
    `APIRouter(responses=problem_responses(404, 503))`."""
    return {
        code: {
            "description": _DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
            "content": {PROBLEM_JSON: {"schema": _SCHEMA_REF}},
            **({"headers": _HEADERS[code]} if code in _HEADERS else {}),
        }
        for code in statuses
    }


def _with_problem_schema(document: dict[str, Any]) -> dict[str, Any]:
    """Add the Problem schema, replace FastAPI's automatic 422 (documented as
    application/json with its own schema) by ours, and document on every operation
    that takes a body the errors any body can get: unreadable (400), too large (413)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    for schema in ("HTTPValidationError", "ValidationError"):
        schemas.pop(schema, None)
    for path in document.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = problem_responses(422)[422]
            if "requestBody" in operation:
                for code, response in problem_responses(400, 413).items():
                    responses.setdefault(str(code), response)
    return document


def install_problem_schema(app: FastAPI) -> None:
    """Make `app.openapi()` (and /openapi.json) document problem+json errors."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _with_problem_schema(document)
        return app.openapi_schema

    replace: Callable[[], dict[str, Any]] = openapi
    app.openapi = replace  # type: ignore[method-assign]
