"""The api's role, set up as on the VM (deploy/postgres/10-roles.sql: an owner runs the
migrations, and its default privileges let the api's role read and write every table it
creates), verifies an API key and records its use, but cannot make, change or revoke a
key, nor touch the schema's revision. The test stack's only role is a superuser, which
no privilege binds: the two roles are made here, and gone with the test's transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import pool, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from alembic import command
from app.core.auth.api_keys import ApiKeyVerifier
from app.core.auth.keys import create_api_key
from app.core.db_errors import sqlstate
from tests.conftest import DatabaseMaker, alembic_config, upgrade_to_head

INSUFFICIENT_PRIVILEGE = "42501"

# What code run in the api could do with a write on these tables.
REFUSED = {
    "make a key": "INSERT INTO api_keys (id, name, secret_sha256, scopes)"
    " VALUES ('0123456789abcdef', 'intruder', '\\x00', '{items:admin}')",
    "widen a key's scopes": "UPDATE api_keys SET scopes = '{items:admin}'",
    "revoke a key": "UPDATE api_keys SET revoked_at = now()",
    "lift an expiry": "UPDATE api_keys SET expires_at = NULL",
    "delete a key": "DELETE FROM api_keys",
    "empty the table": "TRUNCATE api_keys",
    "fake the revision": "UPDATE alembic_version SET version_num = 'c4e7a2f9b815'",
    "add a revision": "INSERT INTO alembic_version VALUES ('f00f00f00f00')",
    "delete the revision": "DELETE FROM alembic_version",
}


@dataclass(frozen=True, slots=True)
class Roles:
    connection: AsyncConnection  # in the test's transaction, as the owner
    owner: str
    api: str

    async def act_as(self, role: str) -> None:
        await self.connection.execute(text(f"SET ROLE {role}"))

    async def outcome(self, statement: str) -> str:
        """The SQLSTATE `statement` fails with, or "ran"."""
        try:
            async with self.connection.begin_nested():
                await self.connection.execute(text(statement))
        except DBAPIError as error:
            return sqlstate(error) or "no SQLSTATE"
        return "ran"

    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return async_sessionmaker(self.connection, join_transaction_mode="create_savepoint")


@pytest.fixture
async def roles(make_database: DatabaseMaker) -> AsyncIterator[Roles]:
    """A fresh database migrated to head by an owner role whose default privileges are
    10-roles.sql's, in a transaction rolled back at the end (the roles with it)."""
    suffix = uuid.uuid4().hex[:8]
    owner, api = f"test_owner_{suffix}", f"test_api_{suffix}"
    engine = create_async_engine(await make_database.create(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            transaction = await connection.begin()
            for statement in (
                f"CREATE ROLE {owner} NOLOGIN",
                f"CREATE ROLE {api} NOLOGIN",
                f"GRANT USAGE, CREATE ON SCHEMA public TO {owner}",
                f"GRANT USAGE ON SCHEMA public TO {api}",
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public"
                f" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {api}",
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public"
                f" GRANT USAGE, SELECT ON SEQUENCES TO {api}",
                f"SET ROLE {owner}",
            ):
                await connection.execute(text(statement))
            await connection.run_sync(upgrade_to_head)
            yield Roles(connection, owner, api)
            await transaction.rollback()
    finally:
        await engine.dispose()


async def test_the_api_role_can_neither_write_keys_nor_the_revision(roles: Roles) -> None:
    async with roles.sessions()() as session, session.begin():
        await create_api_key(session, "billing-bot", ["items:read"])
    await roles.act_as(roles.api)
    outcomes = {what: await roles.outcome(statement) for what, statement in REFUSED.items()}
    assert outcomes == dict.fromkeys(REFUSED, INSUFFICIENT_PRIVILEGE)


async def test_the_api_role_verifies_a_key_and_records_its_use(roles: Roles) -> None:
    async with roles.sessions()() as session, session.begin():
        key = await create_api_key(session, "billing-bot", ["items:read"])
    await roles.act_as(roles.api)
    principal = await ApiKeyVerifier().verify(key, roles.sessions())
    assert principal.subject == "apikey:billing-bot"
    last_used = text("SELECT last_used_at FROM api_keys WHERE name = 'billing-bot'")
    assert await roles.connection.scalar(last_used) is not None


async def test_the_downgrade_gives_the_writes_back(roles: Roles) -> None:
    before = "c4e7a2f9b815"  # the revision before bc7f196e296a, which took them
    await roles.connection.run_sync(lambda c: command.downgrade(alembic_config(c), before))
    for table, privilege in (("api_keys", "INSERT"), ("alembic_version", "UPDATE")):
        held = text("SELECT has_table_privilege(:role, :table, :privilege)")
        values = {"role": roles.api, "table": table, "privilege": privilege}
        assert await roles.connection.scalar(held, values), f"{privilege} on {table}"
