"""Reading database errors: which constraint a write violated, and whether a
failure is transient (retry later: 503) or a bug (500).

Classified by SQLSTATE, the server's own error code, and by SQLAlchemy's
`connection_invalidated`, never by exception class alone: asyncpg raises the same
class for a lost connection and for a bad query.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

# https://www.postgresql.org/docs/current/errcodes-appendix.html
FOREIGN_KEY_VIOLATION = "23503"
UNIQUE_VIOLATION = "23505"
_TRANSIENT_SQLSTATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a failover left us on a replica
        "25P03",  # idle_in_transaction_session_timeout
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "55P03",  # lock_not_available: lock_timeout
        "57014",  # query_canceled: statement_timeout
        "57P01",  # admin_shutdown: the server is restarting
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up or in recovery
    }
)
# Class 08: connection exceptions; class 53: insufficient resources.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53")


def sqlstate(exc: DBAPIError) -> str | None:
    """The server's five-character error code, if the error came from the server."""
    code = getattr(exc.orig, "sqlstate", None)
    return code if isinstance(code, str) else None


def constraint_name(exc: IntegrityError) -> str | None:
    """The name of the violated constraint (asyncpg reports it on the original error)."""
    driver_error = exc.orig.__cause__ if exc.orig is not None else None
    name = getattr(driver_error, "constraint_name", None)
    return name if isinstance(name, str) else None


def is_transient(exc: DBAPIError) -> bool:
    """True when trying again later can succeed: the connection was lost, the server
    is restarting or overloaded, or a timeout, lock or serialization conflict hit."""
    if exc.connection_invalidated:
        return True
    code = sqlstate(exc)
    if code is None:
        # No server code: either the driver lost or never had a connection, or it
        # refused the statement itself (a value it cannot encode: a bug, not an outage).
        return isinstance(exc, OperationalError | InterfaceError)
    return is_transient_sqlstate(code)


def is_transient_sqlstate(code: str) -> bool:
    """is_transient for a bare SQLSTATE: also how asyncpg's own errors are classified,
    raised by a statement sent on the driver connection (app/core/db.py's
    driver_connection), where SQLAlchemy does not wrap them."""
    return code in _TRANSIENT_SQLSTATES or code.startswith(_TRANSIENT_SQLSTATE_CLASSES)


async def flush_or_raise(
    session: AsyncSession, violations: Mapping[str, Callable[[], Exception]]
) -> None:
    """Flush now, turning a violated constraint into its domain error. `violations`
    maps constraint names (e.g. "uq_items_name"), or a SQLSTATE for any constraint of
    that kind (e.g. FOREIGN_KEY_VIOLATION), to the domain error (an AppError) to raise.
    Checking first with a SELECT would race with a concurrent write; the constraint does not.
    Other errors propagate unchanged."""
    try:
        await session.flush()
    except IntegrityError as exc:
        make_error = violations.get(constraint_name(exc) or "") or violations.get(
            sqlstate(exc) or ""
        )
        if make_error is None:
            raise
        raise make_error() from None
