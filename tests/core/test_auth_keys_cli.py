"""`python -m app.core.auth.keys`: create, list and revoke, against the run's database
(these commit: each test uses names of its own and deletes its rows). The scope given is
one tests/core/conftest.py's probe routes require: core's tests run without the domains."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.auth.api_keys import KEY_FORMAT
from app.core.auth.keys import main
from app.core.config import Settings

SCOPE = "widgets:write"


@pytest.fixture
async def key_name(
    engine: AsyncEngine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    monkeypatch.setenv("DATABASE_URL", settings.sqlalchemy_url)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    yield name
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM api_keys WHERE name = :n"), {"n": name})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out.strip(), err.strip()


def test_create_list_revoke(key_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, key, _ = run(capsys, "create", key_name, SCOPE, "--expires-in-days", "30")
    assert status == 0
    assert KEY_FORMAT.fullmatch(key)  # printed once, alone on stdout
    status, listing, _ = run(capsys, "list")
    [line] = [row for row in listing.splitlines() if row.startswith(f"{key_name}\t")]
    assert f"\tactive\tscopes={SCOPE}\t" in line
    assert key[21:] not in listing  # never the secret
    assert run(capsys, "revoke", key_name)[0] == 0
    _, listing, _ = run(capsys, "list")
    assert f"{key_name}\trevoked" in listing


def test_refusals_say_why(key_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "create", key_name, SCOPE)[0] == 0
    assert run(capsys, "revoke", key_name)[0] == 0
    status, _, error = run(capsys, "create", key_name, SCOPE)
    assert status == 1
    assert f"a key named {key_name!r} exists, or did: pick another name" in error
    status, _, error = run(capsys, "create", f"{key_name}-2", "not a scope")
    assert status == 1
    assert "scope 'not a scope' does not match" in error
    status, _, error = run(capsys, "create", f"{key_name}-3", SCOPE, "widgets:wirte")
    assert status == 1
    assert "no route requires 'widgets:wirte'; the scopes the routes require are: " in error
    assert SCOPE in error.partition("require are: ")[2]
    status, _, error = run(capsys, "revoke", f"{key_name}-never-made")
    assert (status, error) == (1, f"error: no active key named '{key_name}-never-made'")


def test_a_resource_s_admin_scope_may_be_given(
    key_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Held, not required by a route: Principal.can_administer("widgets") reads it.
    status, _, error = run(capsys, "create", key_name, SCOPE, "widgets:admin")
    assert (status, error) == (0, "")


def test_a_scope_no_route_requires_yet_is_allowed_when_asked(
    key_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, key, _ = run(capsys, "create", key_name, "invoices:read", "--allow-undeclared")
    assert (status, bool(KEY_FORMAT.fullmatch(key))) == (0, True)
    assert "scopes=invoices:read\t" in run(capsys, "list")[1]


@pytest.mark.parametrize(
    "argv",
    [
        [SCOPE, "--expires-in-days", "0"],  # once a key that never expired
        [SCOPE, "--expires-in-days", "-1"],  # once a key born expired
        [SCOPE, "--expires-in-days", "99999999999"],  # once an OverflowError
    ],
    ids=["0 days", "negative days", "past any date"],
)
def test_a_key_that_could_not_be_meant_is_a_usage_error(
    key_name: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["create", key_name, *argv])
    assert exited.value.code == 2
    assert run(capsys, "list")[1].count(f"{key_name}\t") == 0  # nothing made
