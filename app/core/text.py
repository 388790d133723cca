"""Text field types for request schemas. Postgres cannot store a NUL character, and
names are shown on one line, so both are refused by validation (422), not by the
database (500). The patterns also appear in the OpenAPI schema."""

from __future__ import annotations

from pydantic import StringConstraints

# Never: C1 controls (NEL, a terminal's CSI), and the invisible characters that reorder
# or hide text (bidirectional embeddings, overrides and isolates, the zero-width space,
# word joiner and invisible operators, the BOM): a name that reads as another, or a log
# line that displays what it does not contain. The zero-width (non-)joiner and the
# left-to-right and right-to-left marks stay: scripts and emoji need them.
_HIDDEN = r"\x7f-\x9f\u200b\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
# No control characters at all (NUL, line breaks, escapes), nor line or paragraph
# separators, nor the hidden ones.
_SINGLE_LINE = rf"^[^\x00-\x1f\u2028\u2029{_HIDDEN}]*$"
# Tabs and line breaks allowed; other control characters (NUL among them) are not.
_MULTI_LINE = rf"^[^\x00-\x08\x0b\x0c\x0e-\x1f{_HIDDEN}]*$"


def single_line(*, max_length: int) -> StringConstraints:
    """A trimmed, non-empty line of text up to `max_length` characters."""
    return StringConstraints(
        strip_whitespace=True, min_length=1, max_length=max_length, pattern=_SINGLE_LINE
    )


def multi_line(*, max_length: int) -> StringConstraints:
    """Free text up to `max_length` characters, line breaks and tabs included."""
    return StringConstraints(max_length=max_length, pattern=_MULTI_LINE)
