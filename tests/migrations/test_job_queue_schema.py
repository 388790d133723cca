"""The job queue's tables are the ones the installed pgqueuer expects: its schema lives
in an Alembic migration (3b8f5c1e9d20), copied from the package, so an upgrade of
pgqueuer that changes it needs a migration of ours."""

from __future__ import annotations

from importlib.metadata import version

from pgqueuer import AsyncpgDriver, Queries
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.db import driver_connection


async def test_the_migrations_hold_the_schema_the_installed_pgqueuer_expects(
    engine: AsyncEngine,
) -> None:
    async with AsyncSession(engine) as session:
        queries = Queries(AsyncpgDriver(await driver_connection(session)))
        plan = await queries.plan_upgrade()
    missing = "\n".join(plan.statements)
    assert not plan.statements, (
        f"pgqueuer {version('pgqueuer')} expects schema changes the migrations lack. Add an "
        "Alembic migration (`make revision m=...`) that runs these statements in upgrade() "
        f"(not `pgq upgrade`, which Alembic would not know about):\n{missing}"
    )
