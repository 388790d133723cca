"""The text field types: what a name and a description refuse (422), and keep."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import TypeAdapter, ValidationError

from app.core.text import multi_line, single_line

Name = TypeAdapter(Annotated[str, single_line(max_length=200)])
Description = TypeAdapter(Annotated[str, multi_line(max_length=10_000)])

HIDDEN = {
    "NUL": "a\x00b",
    "DEL": "a\x7fb",
    "NEL (C1)": "nel\x85x",
    "CSI (C1), a terminal escape": "\x9b31m red",
    "right-to-left override": "rtl\u202egnp.exe",
    "left-to-right isolate": "a\u2066b",
    "zero-width space": "zw\u200b",
    "word joiner": "a\u2060b",
    "byte order mark": "\ufeffbom",
}


@pytest.mark.parametrize("value", list(HIDDEN.values()), ids=list(HIDDEN))
def test_hidden_and_control_characters_are_refused_everywhere(value: str) -> None:
    with pytest.raises(ValidationError):
        Name.validate_python(value)
    with pytest.raises(ValidationError):
        Description.validate_python(value)


@pytest.mark.parametrize("value", ["line\nbreak", "tab\there", "a\u2028b", "a\u2029b"])
def test_a_name_is_one_line(value: str) -> None:
    with pytest.raises(ValidationError):
        Name.validate_python(value)


@pytest.mark.parametrize(
    "value",
    [
        "café",
        "cafe\u0301",
        "Zoë & Søren",
        "日本語",
        "emoji 🎉",
        "a\u00a0b",
        "family \U0001f468\u200d\U0001f469\u200d\U0001f467",  # emoji joined by ZWJ
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
        "\u05e9\u05dc\u05d5\u05dd \u200fabc",  # Hebrew, a right-to-left mark
    ],
)
def test_text_in_any_script_is_kept(value: str) -> None:
    assert Name.validate_python(value) == value
    assert Description.validate_python(value) == value


def test_a_description_keeps_line_breaks_and_tabs() -> None:
    assert Description.validate_python("one\n\ttwo\r\n") == "one\n\ttwo\r\n"
