"""One logging setup, one format, for the app, uvicorn, gunicorn and SQLAlchemy.

Two paths lead to the same line on stdout:
- The app's own lines (`structlog.get_logger(__name__)`, the access line included) take
  structlog's fast path: a bound logger whose calls below the level are empty methods,
  built once and cached, rendered by orjson and written to stdout as bytes, the lines
  of one event-loop turn in one write (app/core/log_output.py). No `logging`
  machinery in between: this is several times cheaper per line.
- Records of libraries (uvicorn, gunicorn, SQLAlchemy, asyncio) go through the standard
  library's root handler, where structlog's `ProcessorFormatter` runs the same
  processors and renderer.

JSON in production, key=value in development. Every line logged while a request is
handled carries its request id, whichever path it took. Tracebacks never include frame
locals, and `redact_secrets` masks secrets before anything is rendered.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
import structlog
from pydantic_settings import BaseSettings
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from app.core.config import LogFormat, LogLevel
from app.core.log_output import CoalescedHandler, CoalescedLoggerFactory
from app.core.request_id import current_request_id

# Loggers of libraries whose records should flow to the root handler, not their own.
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "gunicorn.error", "gunicorn.access", "sqlalchemy")
# Replaced by our own access line, which carries the request id and duration.
_SILENCED_LOGGERS = ("uvicorn.access",)

REDACTED = "[redacted]"
# A value logged under a key containing one of these is masked, whatever it is.
_SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "cookie",
    "api_key",
    "apikey",
    "credential",
    "dsn",
)
# scheme://user:password@host -> scheme://user:[redacted]@host (database and Redis URLs).
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^\s/:@]*):[^\s/@]*@", re.IGNORECASE)
# Credentials written into free text: a JWT (its header always starts "eyJ"), and an
# API key's secret (app/core/auth/api_keys.py: <prefix>_<id>_<secret>; the id stays).
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_API_KEY_SECRET = re.compile(r"\b([a-z]{2,8}_[0-9a-f]{16}_)[A-Za-z0-9_-]{43}")
# Values the JSON and console renderers print as they are; anything else is looked at.
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), datetime})
_LOGGED_MARK = "_app_logged"


def mark_logged(exc: BaseException) -> None:
    """Record that `exc` has been logged (with its traceback), so the server's own report
    of the same exception is dropped by `SkipAlreadyLogged`."""
    # An exception class with __slots__ cannot be marked: logged twice, never lost.
    with contextlib.suppress(AttributeError):
        setattr(exc, _LOGGED_MARK, True)


class SkipAlreadyLogged(logging.Filter):
    """Drops records that carry an exception the app has already logged.

    Starlette re-raises an unhandled exception after sending the 500, and uvicorn then
    logs it again ("Exception in ASGI application"), without our request id. The
    access middleware logs it first, once, with the request id; this drops the repeat,
    and only that one: an exception the app never saw is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, _LOGGED_MARK, False)


@lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in _SECRET_KEY_PARTS)


def _without_secrets(text: str) -> str:
    """`text` without the secrets a message can carry: URL passwords, tokens, API keys."""
    if "://" in text and "@" in text:
        text = _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", text)
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    if "_" in text and len(text) >= 60:
        text = _API_KEY_SECRET.sub(r"\1" + REDACTED, text)
    return text


def _redacted(value: Any) -> Any:
    """`value` with secrets masked; plain values come back as they are."""
    kind = type(value)
    if kind is str:
        return _without_secrets(value)
    if kind in _PLAIN_TYPES:
        return value
    if isinstance(value, dict):
        return {
            key: REDACTED if isinstance(key, str) and _is_secret_key(key) else _redacted(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redacted(item) for item in value]
    if isinstance(value, BaseSettings):
        return f"<{kind.__name__} omitted>"  # settings hold every secret the app has
    # Anything else is rendered as text, so a URL or DSN object cannot slip through.
    return _without_secrets(str(value))


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Masks values under secret-looking keys and passwords in URLs, in every value
    (exception text included). Runs after exceptions are rendered, before the renderer."""
    for key, value in event_dict.items():
        kind = type(value)
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif kind is str:  # the common case: this runs on every value of every line
            event_dict[key] = _without_secrets(value)
        elif kind not in _PLAIN_TYPES:
            event_dict[key] = _redacted(value)
    return event_dict


def add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The id of the request being handled, which the middleware keeps in a ContextVar."""
    request_id = current_request_id()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn passes a pre-coloured copy of its message as an "extra"; we render our own.
    event_dict.pop("color_message", None)
    return event_dict


def _context() -> list[Processor]:
    # merge_contextvars keeps `structlog.contextvars.bind_contextvars(...)` working for
    # anything else a handler wants on its lines.
    return [structlog.contextvars.merge_contextvars, add_request_id]


def _add_utc_datetime(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # orjson writes it as ISO 8601 ("...Z") several times faster than isoformat() does.
    event_dict["timestamp"] = datetime.now(UTC)
    return event_dict


def _finish(fmt: LogFormat) -> list[Processor]:
    """Timestamp, exception, secrets: the steps both paths share before the renderer."""
    if fmt == "json":
        timestamp: Processor = _add_utc_datetime
        # Tracebacks as data, never with frame locals: they hold passwords and request data.
        exceptions: Processor = structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)
        )
    else:
        timestamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
        exceptions = structlog.processors.format_exc_info  # plain text, no locals
    return [timestamp, structlog.processors.StackInfoRenderer(), exceptions, redact_secrets]


def _orjson_default(value: object) -> str:
    # Only called for types orjson cannot encode; redact_secrets has turned most into text.
    return _without_secrets(str(value))


def _orjson_bytes(value: object, **kwargs: Any) -> bytes:
    try:
        return orjson.dumps(value, **kwargs)
    except orjson.JSONEncodeError:
        # What orjson refuses (a lone surrogate a client sent, an integer past 64 bits)
        # is written escaped, not the whole line lost with an error in the request.
        return orjson.dumps(_encodable(value), **kwargs)


def _encodable(value: object) -> object:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(item) for item in value]
    return value


def _orjson_text(value: object, **kwargs: Any) -> str:
    # logging's handlers write text; the app's own lines are written as bytes.
    return _orjson_bytes(value, **kwargs).decode()


def _json(serializer: Callable[..., str | bytes]) -> Processor:
    return structlog.processors.JSONRenderer(
        serializer=serializer, default=_orjson_default, option=orjson.OPT_UTC_Z
    )


def _encode(_: WrappedLogger, __: str, line: Any) -> bytes:
    # The console renderer's text, for BytesLogger; a lone surrogate written escaped.
    return str(line).encode("utf-8", "backslashreplace")


def _console() -> structlog.dev.ConsoleRenderer:
    # plain_traceback: rich's (the default when rich is installed) prints frame locals.
    return structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback
    )


def app_processors(fmt: LogFormat) -> list[Processor]:
    """The processors of the app's own lines; the last one returns the bytes written."""
    renderer: list[Processor] = [_json(_orjson_bytes)] if fmt == "json" else [_console(), _encode]
    return [
        *_context(),
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,  # BytesLogger carries the name given to get_logger
        *_finish(fmt),
        *renderer,
    ]


def build_logging_config(level: LogLevel, fmt: LogFormat) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict; gunicorn_conf.py passes the same dict to gunicorn."""
    renderer = _json(_orjson_text) if fmt == "json" else _console()
    skip_already_logged: Callable[[], logging.Filter] = SkipAlreadyLogged
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"skip_already_logged": {"()": skip_already_logged}},
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": [
                    *_context(),
                    structlog.processors.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.stdlib.ExtraAdder(),
                    _drop_color_message,
                ],
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    *_finish(fmt),
                    renderer,
                ],
            }
        },
        "handlers": {
            "stdout": {
                "()": CoalescedHandler,
                "formatter": "structured",
                "filters": ["skip_already_logged"],
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
    """Configure stdlib logging and structlog. Call it before the first line is logged:
    a logger is built on first use and keeps that configuration (that is what makes it
    fast); calling again with the same values is harmless."""
    logging.config.dictConfig(build_logging_config(level, fmt))
    structlog.configure(
        processors=app_processors(fmt),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=CoalescedLoggerFactory(),
        cache_logger_on_first_use=True,
    )
