"""The development server (Dockerfile.dev's command): uvicorn with auto-reload.

`uvicorn --reload` on the command line would log its reloader's own lines
("Started reloader process", "WatchFiles detected changes") in uvicorn's plain
format, before the app configures logging. Here uvicorn gets the app's logging
config instead, so every line of `make logs` has the same shape.

With DEBUGPY=1 (`make debug`), each server process the reloader starts listens
for a debugger on port 5678; a reload ends the session, so attach again after one.
The debug adapter runs inside that process, so it frees the port when it exits.
"""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from app.core.config import LoggingSettings
from app.core.logging import build_logging_config

DEBUGPY_PORT = 5678


def serve_app() -> FastAPI:
    """uvicorn's app factory: runs in the server process, once per reload."""
    if os.environ.get("DEBUGPY", "").lower() in {"1", "true"}:
        import debugpy  # noqa: PLC0415  # a dev-only dependency, loaded only when asked for

        # All interfaces inside the container; the compose file publishes the port on
        # the host's localhost only (docker-compose.debug.yml).
        debugpy.listen(("0.0.0.0", DEBUGPY_PORT), in_process_debug_adapter=True)  # noqa: S104
    from app.main import app  # noqa: PLC0415  # imported here, in the reloaded process

    return app


def main() -> None:
    settings = LoggingSettings()
    uvicorn.run(
        "scripts.dev_server:serve_app",
        factory=True,
        host="0.0.0.0",  # noqa: S104  # inside the container; published on localhost only
        port=8000,
        reload=True,
        reload_dirs=["app"],
        log_config=build_logging_config(settings.log_level, settings.effective_log_format),
    )


if __name__ == "__main__":
    main()
