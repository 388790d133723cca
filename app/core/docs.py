"""The interactive API docs, for people: on in development, off in production
(which still serves /openapi.json for clients and tools).

Swagger UI's files come from the `fastapi-swagger` package (a dev dependency)
and are served by the app itself, so /docs works offline and loads nothing from a
CDN. Without the package (the production image) FastAPI's CDN-based page is used.
"""

from __future__ import annotations

import importlib.util

from fastapi import FastAPI

from app.core.config import Settings

DOCS_URL = "/docs"


def docs_served_locally() -> bool:
    return importlib.util.find_spec("fastapi_swagger") is not None


def fastapi_docs_url(settings: Settings) -> str | None:
    """What to pass as FastAPI(docs_url=…): None when docs are off or served by us."""
    if settings.environment == "production" or docs_served_locally():
        return None
    return DOCS_URL


def add_local_docs(app: FastAPI, settings: Settings) -> None:
    if settings.environment == "production" or not docs_served_locally():
        return
    from fastapi_swagger import patch_fastapi  # type: ignore[import-untyped]  # noqa: PLC0415

    patch_fastapi(app, docs_url=DOCS_URL, redirect_from_root_to_docs=False)
