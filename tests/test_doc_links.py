"""Every relative link in README.md and docs/ leads to a file that exists: a doc that
moves, or a fork made without a deploy target (`make init targets=...`), breaks none."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# [text](target) and [text](target#anchor); the target, without the anchor.
LINK = re.compile(r"\]\(([^)#\s]*)(?:#[^)\s]*)?\)")


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(page.read_text(encoding="utf-8"))
        if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # not https:, mailto:
    ]


def test_every_relative_link_in_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in relative_links(page)
        if not (page.parent / target).exists()
    ]
    assert not broken, "links to nothing:\n" + "\n".join(broken)
