"""`make resource` (scripts/new_resource.py): names are checked, the wiring is
deterministic, and the output passes ruff whatever the name's length or place in the
import order. `make check-resource` runs the full `make lint` and `make test` on it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scripts import new_resource
from scripts.new_resource import ScaffoldError, scaffold
from tests.conftest import ROOT

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The files the scaffold reads, copied from this checkout."""
    for name in ("pyproject.toml", "app/__init__.py", "app/main.py", "tests/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "alembic" / "versions", tmp_path / "alembic" / "versions")
    for package in ("app/items", "tests/items"):
        (tmp_path / package).mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "singular"),
    [
        ("Widgets", None),  # not lowercase
        ("widget", None),  # no final s: give the singular
        ("two_words_", None),
        ("x" * 16 + "s", None),  # too long for the templates' lines
        ("core", None),
        ("items", None),  # exists
        ("classes", "class"),  # a keyword
        ("widgets", "widgets"),
        ("widgets", "Widget"),
    ],
)
def test_bad_names_are_refused_and_write_nothing(
    checkout: Path, name: str, singular: str | None
) -> None:
    before = sorted(checkout.rglob("*"))
    with pytest.raises(ScaffoldError):
        scaffold(checkout, name, singular, NOW)
    assert sorted(checkout.rglob("*")) == before


def test_singular_is_the_name_without_its_s_unless_given(checkout: Path) -> None:
    scaffold(checkout, "widgets", None, NOW)
    scaffold(checkout, "people", "person", NOW)
    assert "class Widget(Base):" in (checkout / "app/widgets/models.py").read_text()
    assert "class Person(Base):" in (checkout / "app/people/models.py").read_text()
    router = (checkout / "app/people/router.py").read_text()
    assert '"/{person_id}"' in router
    assert 'prefix="/people"' in router


def test_migrations_chain_on_the_current_head(checkout: Path) -> None:
    head = new_resource.current_head(checkout / "alembic" / "versions")
    scaffold(checkout, "widgets", None, NOW)
    (created,) = (checkout / "alembic" / "versions").glob("2030_01_02_0304-*_create_widgets.py")
    assert f'down_revision: str | Sequence[str] | None = "{head}"' in created.read_text()
    scaffold(checkout, "gadgets", None, NOW)
    new_head = new_resource.current_head(checkout / "alembic" / "versions")
    (gadgets,) = (checkout / "alembic" / "versions").glob("*_create_gadgets.py")
    assert new_head is not None
    assert new_head in gadgets.name


def test_main_and_the_contract_are_wired(checkout: Path) -> None:
    scaffold(checkout, "widgets", None, NOW)
    main = (checkout / "app/main.py").read_text()
    assert main.count("from app.widgets.router import router as widgets_router\n") == 1
    assert main.count("api_v1.include_router(widgets_router)\n") == 1
    pyproject = (checkout / "pyproject.toml").read_text()
    assert '    "app.widgets",\n' in pyproject
    assert '    "tests.widgets",\n' in pyproject


def ruff(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # our own interpreter and arguments
        [sys.executable, "-m", "ruff", *args, "app", "tests", "alembic"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_output_passes_ruff_for_short_long_and_early_sorting_names(checkout: Path) -> None:
    # "accounts" sorts before app.core, "order_lines" between others, the 16-character
    # names are the longest allowed; "bs" gives one-letter identifiers.
    for name, singular in [
        ("widgets", None),
        ("accounts", None),
        ("order_lines", None),
        ("abcdefghijklmnos", None),
        ("abcdefg_hijklmns", None),
        ("bs", None),
        ("people", "person"),
    ]:
        scaffold(checkout, name, singular, NOW)
    for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        result = ruff(checkout, *args)
        assert result.returncode == 0, result.stdout + result.stderr
