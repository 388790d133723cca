"""The service's domains, found by convention rather than listed: each package beside
app/core (app/items, app/orders, …). Core reaches a domain's models or routers this way
without importing any domain by name, and a new resource needs no line here."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import app


def import_from_every_domain(module: str) -> None:
    """Import `app.<domain>.<module>` for every domain that has one (e.g. "models")."""
    for package in pkgutil.iter_modules(app.__path__):
        name = f"app.{package.name}.{module}"
        if package.ispkg and importlib.util.find_spec(name):
            importlib.import_module(name)
