"""Every relative link in README.md and docs/ leads to a file that exists, and its
`#anchor`, if any, to a heading of that file: a doc that moves or renames a section,
or a fork made without a deploy target (`make init targets=...`), breaks none."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# [text](target), [text](target#anchor) and [text](#anchor).
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def relative_links(page: Path) -> list[tuple[str, str]]:
    """(file, anchor) of each relative link; the file is "" for one into the page itself."""
    return [
        (target, anchor)
        for target, anchor in LINK.findall(page.read_text(encoding="utf-8"))
        if (target or anchor) and not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # not https:
    ]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped,
    spaces to hyphens (a repeated heading's -1, -2 are not needed here)."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in HEADING.findall(text)
    }


def test_every_relative_link_in_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target, anchor in relative_links(page):
            linked = page.parent / target if target else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken, "links to nothing:\n" + "\n".join(broken)
