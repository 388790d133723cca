"""Text field types for request schemas. Postgres cannot store a NUL character, and
names are shown on one line, so both are refused by validation (422), not by the
database (500). The patterns also appear in the OpenAPI schema."""

from __future__ import annotations

from pydantic import StringConstraints

# No control characters at all: NUL, line breaks, escapes, DEL.
_SINGLE_LINE = r"^[^\x00-\x1f\x7f]*$"
# Tabs and line breaks allowed; other control characters (NUL among them) are not.
_MULTI_LINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


def single_line(*, max_length: int) -> StringConstraints:
    """A trimmed, non-empty line of text up to `max_length` characters."""
    return StringConstraints(
        strip_whitespace=True, min_length=1, max_length=max_length, pattern=_SINGLE_LINE
    )


def multi_line(*, max_length: int) -> StringConstraints:
    """Free text up to `max_length` characters, line breaks and tabs included."""
    return StringConstraints(max_length=max_length, pattern=_MULTI_LINE)
