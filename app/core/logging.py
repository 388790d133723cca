"""One logging setup for the app, uvicorn, gunicorn and SQLAlchemy.

Everything goes through the standard library's root handler, formatted by
structlog: JSON lines in production, coloured key=value in development. Values
bound with `structlog.contextvars` (the request id) appear on every line logged
while a request is handled, whichever library logged it.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from app.core.config import LogFormat, LogLevel

# Loggers of libraries whose records should flow to the root handler, not their own.
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "gunicorn.error", "gunicorn.access", "sqlalchemy")
# Replaced by our own access line, which carries the request id and duration.
_SILENCED_LOGGERS = ("uvicorn.access",)


def _drop_color_message(_: Any, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn passes a pre-coloured copy of its message as an "extra"; we render our own.
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def build_logging_config(level: LogLevel, fmt: LogFormat) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict; gunicorn_conf.py passes the same dict to gunicorn."""
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        format_exc: list[Processor] = [structlog.processors.dict_tracebacks]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        format_exc = []
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": _shared_processors(),
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *format_exc,
                    renderer,
                ],
            }
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "structured",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            **{name: {"handlers": [], "propagate": True} for name in _LIBRARY_LOGGERS},
            **{name: {"handlers": [], "propagate": False} for name in _SILENCED_LOGGERS},
            # SQL statements only at DEBUG: they are noisy and may carry data.
            "sqlalchemy.engine": {
                "handlers": [],
                "propagate": True,
                "level": "INFO" if level == "DEBUG" else "WARNING",
            },
        },
    }


def configure_logging(level: LogLevel, fmt: LogFormat) -> None:
    """Configure stdlib logging and structlog; safe to call more than once."""
    logging.config.dictConfig(build_logging_config(level, fmt))
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
