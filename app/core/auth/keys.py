"""Create, list and revoke API keys: `python -m app.core.auth.keys --help`.

Development: `make api-key name=ci-bot scopes="items:read items:write"`.
Production (VM): `docker compose -f docker-compose.prod.yml run --rm --no-deps migrate
python -m app.core.auth.keys create ci-bot items:read`: as the owner role, since the api's
may not write keys. docs/auth.md has the other deploy targets. A new key is printed
once, on stdout alone, so a script can capture it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.auth.api_keys import ApiKey, generate_key, subject_of
from app.core.auth.dependencies import declared_scopes
from app.core.config import SettingsError, load_settings
from app.core.db import create_engine, create_session_factory

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
SCOPE_PATTERN = r"^[a-z0-9_-]+:[a-z0-9_-]+$"
# A key that should outlive ten years should be a key made again by then.
MAX_DAYS = 3650


class ApiKeyCommandError(Exception):
    """A command that cannot be done (a name taken, unknown); the message says why."""


async def create_api_key(
    session: AsyncSession, name: str, scopes: Sequence[str], expires_at: datetime | None = None
) -> str:
    """Store a new key and return it in plain text: the only time it exists as such."""
    new = generate_key()
    session.add(
        ApiKey(
            id=new.row_id,
            name=name,
            secret_sha256=new.secret_sha256,
            scopes=sorted(set(scopes)),
            expires_at=expires_at,
        )
    )
    try:
        await session.flush()
    except IntegrityError:
        raise ApiKeyCommandError(
            f"a key named {name!r} exists, or did: pick another name (a name is never"
            " reused, revoked or not: its subject owns what that key wrote)"
        ) from None
    return new.plaintext


async def revoke_api_key(session: AsyncSession, name: str) -> None:
    """Revoke the key; every worker refuses it within REVALIDATE_SECONDS. The row stays
    (its name is not reused), so the audit trail keeps who held it and when."""
    done = await session.execute(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey.id)
    )
    if done.first() is None:
        raise ApiKeyCommandError(f"no active key named {name!r}")


async def list_api_keys(session: AsyncSession) -> list[ApiKey]:
    return list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def _days(text: str) -> int:
    """An expiry in whole days, 1 to MAX_DAYS: 0 read as "never" once, and a huge
    number overflowed the date."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of days from 1 to {MAX_DAYS}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.core.auth.keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key; it is printed once")
    create.add_argument("name", help="who holds it, e.g. billing-worker (unique)")
    # None is allowed: a route that needs only an identity lets a scope-less key in.
    create.add_argument("scopes", nargs="*", help="e.g. items:read orders:write")
    create.add_argument(
        "--allow-undeclared",
        action="store_true",
        help="allow scopes no route requires yet (a typo is otherwise refused)",
    )
    create.add_argument(
        "--expires-in-days", type=_days, default=None, help=f"1 to {MAX_DAYS} (default: never)"
    )
    revoke = commands.add_parser("revoke", help="revoke a key by name")
    revoke.add_argument("name")
    commands.add_parser("list", help="list keys: name, scopes, expiry, last use (no secrets)")
    return parser


async def _run(args: argparse.Namespace) -> str:
    if args.command == "create":
        _check(args.name, NAME_PATTERN, "name")
        for scope in args.scopes:
            _check(scope, SCOPE_PATTERN, "scope")
        if not args.allow_undeclared:
            _check_declared(args.scopes)
    settings = load_settings()
    engine = create_engine(settings)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            if args.command == "create":
                expires = (
                    datetime.now(UTC) + timedelta(days=args.expires_in_days)
                    if args.expires_in_days is not None
                    else None
                )
                return await create_api_key(session, args.name, args.scopes, expires)
            if args.command == "revoke":
                await revoke_api_key(session, args.name)
                return f"revoked {args.name!r} (subject {subject_of(args.name)})"
            return "\n".join(_describe(key) for key in await list_api_keys(session))
    finally:
        await engine.dispose()


def _check(value: str, pattern: str, what: str) -> None:
    if not re.fullmatch(pattern, value):
        raise ApiKeyCommandError(f"{what} {value!r} does not match {pattern}")


def _check_declared(scopes: Sequence[str]) -> None:
    declared = declared_scopes()
    undeclared = sorted(set(scopes) - declared)
    if undeclared:
        raise ApiKeyCommandError(
            f"no route requires {', '.join(map(repr, undeclared))}; the scopes the routes"
            f" require are: {' '.join(sorted(declared)) or 'none yet'} (--allow-undeclared"
            " for a route not deployed yet)"
        )


def _describe(key: ApiKey) -> str:
    state = "revoked" if key.revoked_at else "active"
    expires = key.expires_at.isoformat() if key.expires_at else "never"
    used = key.last_used_at.isoformat() if key.last_used_at else "never"
    return (
        f"{key.name}\t{state}\tscopes={','.join(key.scopes) or '-'}\texpires={expires}"
        f"\tlast_used={used}\tsubject={subject_of(key.name)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        output = asyncio.run(_run(args))
    except (ApiKeyCommandError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if output:
        print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
