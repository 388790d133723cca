"""The application: the core factory plus this service's routers. Wiring only.
Entry point: `app.main:app`."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from fastapi import FastAPI

from app.core.application import build_app
from app.core.config import Settings, SettingsError, get_settings
from app.health.router import router as health_router
from app.items.router import router as items_router
from app.orders.router import router as orders_router

# The service's name and version live in pyproject.toml (the image carries it).
PROJECT = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text("utf-8"))
TITLE = str(PROJECT["project"]["name"])
VERSION = str(PROJECT["project"]["version"])


def create_app(settings: Settings | None = None) -> FastAPI:
    return build_app(
        settings or get_settings(),
        routers=[health_router],
        # Served under /api/v1, in this order; `make resource` adds new ones at the end.
        api_routers=[
            items_router,
            orders_router,
        ],
        title=TITLE,
        version=VERSION,
    )


try:
    app = create_app()
except SettingsError as exc:
    sys.exit(str(exc))
