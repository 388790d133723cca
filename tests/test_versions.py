"""One Python and one uv, wherever a version is named: `.python-version` (uv, CI), the
project's `requires-python`, ruff's and mypy's targets, and every image this repository
builds. A bump that reaches one of them and not the others (a Dependabot pull request
for one Dockerfile) fails here, not in an image that runs another Python than CI tested."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted(
    path
    for pattern in ("Dockerfile*", "*/Dockerfile*", "*/*/Dockerfile*", "*/*.Dockerfile")
    for path in ROOT.glob(pattern)
    if not path.name.endswith(".dockerignore")
)


def images(named: str) -> dict[str, set[str]]:
    """The tags of image `named` that each Dockerfile's FROM lines name."""
    found: dict[str, set[str]] = {}
    for path in DOCKERFILES:
        tags = re.findall(rf"^FROM {re.escape(named)}:(\S+)", path.read_text(), re.MULTILINE)
        if tags:
            found[str(path.relative_to(ROOT))] = set(tags)
    return found


def test_every_tool_and_image_names_the_same_python() -> None:
    version = (ROOT / ".python-version").read_text().strip()
    major, minor = version.split(".")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={version},<{major}.{int(minor) + 1}"
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{major}{minor}"
    assert pyproject["tool"]["mypy"]["python_version"] == version
    python_images = images("python")
    assert "Dockerfile" in python_images
    assert "Dockerfile.dev" in python_images
    for dockerfile, tags in python_images.items():
        assert all(tag.startswith(f"{version}-") for tag in tags), (dockerfile, tags)


def test_the_images_take_the_same_uv() -> None:
    uv = images("ghcr.io/astral-sh/uv")
    assert set(uv) == {"Dockerfile", "Dockerfile.dev"}
    assert uv["Dockerfile"] == uv["Dockerfile.dev"]
