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

ROOT = Path(__file__).resolve().parent.parent

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The files the scaffold reads, copied from this checkout. The tests use names
    no resource of this service has (probes, …), so they hold in any fork."""
    for name in ("pyproject.toml", "app/__init__.py", "app/main.py", "tests/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "alembic" / "versions", tmp_path / "alembic" / "versions")
    # What the generated modules import from, so ruff sorts those imports as first-party.
    shutil.copytree(ROOT / "app" / "core", tmp_path / "app" / "core")
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
        ("probes", "probes"),
        ("probes", "Probe"),
        ("sessions", None),  # the singular would shadow the code's own `session`
        ("probe_categories", None),  # not "probe_categorie": give the singular
        ("probe_addresses", None),
        ("api_keys", None),  # core's table (only the migrations say so)
        ("nones", None),  # its class would be `None`
        ("statuses", "x" * 17),  # a singular too long for the templates' lines
        ("status", None),  # not a plural: `statu` was guessed
        ("analysis", None),
    ],
)
def test_bad_names_are_refused_and_write_nothing(
    checkout: Path, name: str, singular: str | None
) -> None:
    before = sorted(checkout.rglob("*"))
    with pytest.raises(ScaffoldError):
        scaffold(checkout, name, singular, NOW)
    assert sorted(checkout.rglob("*")) == before


def test_the_article_follows_the_sound(checkout: Path) -> None:
    assert new_resource.Names("users", "user").substitutions()["A_words"] == "A user"
    assert new_resource.Names("orders", "order").substitutions()["a_words"] == "an order"


def test_singular_is_the_name_without_its_s_unless_given(checkout: Path) -> None:
    scaffold(checkout, "probes", None, NOW)
    scaffold(checkout, "probe_people", "probe_person", NOW)
    assert "class Probe(Base):" in (checkout / "app/probes/models.py").read_text()
    assert "class ProbePerson(Base):" in (checkout / "app/probe_people/models.py").read_text()
    router = (checkout / "app/probe_people/router.py").read_text()
    assert '"/{probe_person_id}"' in router
    assert 'prefix="/probe-people"' in router


def test_migrations_chain_on_the_current_head(checkout: Path) -> None:
    head = new_resource.current_head(checkout / "alembic" / "versions")
    scaffold(checkout, "probes", None, NOW)
    (created,) = (checkout / "alembic" / "versions").glob("2030_01_02_0304-*_create_probes.py")
    assert f'down_revision: str | Sequence[str] | None = "{head}"' in created.read_text()
    scaffold(checkout, "probe_lines", None, NOW)
    new_head = new_resource.current_head(checkout / "alembic" / "versions")
    (second,) = (checkout / "alembic" / "versions").glob("*_create_probe_lines.py")
    assert new_head is not None
    assert new_head in second.name


def test_the_placeholder_of_a_fork_without_examples_goes_with_its_first_router() -> None:
    main = "from app.core.application import build_app\n\napi_routers=[\n    # none yet\n],\n"
    wired = new_resource.wire_router(main, new_resource.Names("probes", "probe"))
    assert "# none yet" not in wired
    assert "api_routers=[\n    probes_router,\n],\n" in wired


def test_main_and_the_contract_are_wired_once(checkout: Path) -> None:
    scaffold(checkout, "probes", None, NOW)
    main = (checkout / "app/main.py").read_text()
    assert main.count("from app.probes.router import router as probes_router\n") == 1
    # Last in the list of routers served under /api/v1, after the existing ones.
    assert main.count("            probes_router,\n") == 1
    assert "            items_router,\n" in main.split("probes_router,")[0]
    assert "            probes_router,\n        ],\n" in main
    pyproject = (checkout / "pyproject.toml").read_text()
    assert '    "app.probes",\n' in pyproject
    assert '    "tests.probes",\n' in pyproject
    # Deleting the package (and its migration) but not its wiring: refused rather than
    # wired twice.
    shutil.rmtree(checkout / "app/probes")
    shutil.rmtree(checkout / "tests/probes")
    for migration in (checkout / "alembic" / "versions").glob("*_create_probes.py"):
        migration.unlink()
    with pytest.raises(ScaffoldError, match=r"imports app\.probes already"):
        scaffold(checkout, "probes", None, NOW)


def ruff(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # our own interpreter and arguments
        [sys.executable, "-m", "ruff", *args, "app", "tests", "alembic"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_output_passes_ruff_for_short_long_and_early_sorting_names(checkout: Path) -> None:
    # "aprobes" sorts before app.core, "probe_lines" before "probes" (_ < s), the
    # 16-character names are the longest allowed; "qs" gives one-letter identifiers.
    for name, singular in [
        ("probes", None),
        ("aprobes", None),
        ("probe_lines", None),
        ("qqqqqqqqqqqqqqqs", None),
        ("qqqqqqq_qqqqqqqs", None),
        ("qs", None),
        ("probe_people", "probe_person"),
    ]:
        scaffold(checkout, name, singular, NOW)
    for args in (["check", "--no-cache"], ["format", "--check", "--no-cache"]):
        result = ruff(checkout, *args)
        assert result.returncode == 0, result.stdout + result.stderr
