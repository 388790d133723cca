"""leave key and revision writes to the owner

The api's role (`app`, deploy/postgres/10-roles.sql) got every write on every table from
the owner's default privileges: code run in the api could make itself a key with any
scope, or fake the schema's revision. Now it reads api_keys and records a key's use
(last_used_at), and nothing more; alembic_version is the owner's alone. Keys are made and
revoked with the owner's credentials (docs/auth.md).

The grantees are taken from the tables' privileges, not named: the dev and test stacks
have a single role, `app` too, which owns the tables and keeps its rights; a fork may
name its roles otherwise.

Revision ID: bc7f196e296a
Revises: c4e7a2f9b815
Create Date: 2026-12-08 01:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "bc7f196e296a"
down_revision: str | Sequence[str] | None = "c4e7a2f9b815"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every role but the owner holding a privilege on the table (0 is PUBLIC), and whether
# it could UPDATE: a role that could only read is given nothing.
GRANTEES = """
    SELECT CASE acl.grantee WHEN 0 THEN 'PUBLIC' ELSE acl.grantee::regrole::text END AS name,
           bool_or(acl.privilege_type = 'UPDATE') AS updated
    FROM pg_class AS t, aclexplode(t.relacl) AS acl
    WHERE t.oid = '{table}'::regclass AND acl.grantee <> t.relowner
    GROUP BY acl.grantee
"""


def upgrade() -> None:
    op.execute(f"""
        DO $$
        DECLARE
            grantee record;
        BEGIN
            FOR grantee IN {GRANTEES.format(table="api_keys")} LOOP
                EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON api_keys FROM %s',
                               grantee.name);
                IF grantee.updated THEN
                    EXECUTE format('GRANT UPDATE (last_used_at) ON api_keys TO %s', grantee.name);
                END IF;
            END LOOP;
            FOR grantee IN {GRANTEES.format(table="alembic_version")} LOOP
                EXECUTE format('REVOKE ALL ON alembic_version FROM %s', grantee.name);
            END LOOP;
        END $$
    """)


def downgrade() -> None:
    # Those that record uses are the roles the upgrade took writes from: they get back
    # what the default privileges had given them.
    op.execute("""
        DO $$
        DECLARE
            grantee text;
        BEGIN
            FOR grantee IN
                SELECT DISTINCT CASE acl.grantee WHEN 0 THEN 'PUBLIC'
                                ELSE acl.grantee::regrole::text END
                FROM pg_class AS t
                JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attname = 'last_used_at',
                     aclexplode(a.attacl) AS acl
                WHERE t.oid = 'api_keys'::regclass AND acl.grantee <> t.relowner
            LOOP
                EXECUTE format('REVOKE UPDATE (last_used_at) ON api_keys FROM %s', grantee);
                EXECUTE format('GRANT INSERT, UPDATE, DELETE ON api_keys TO %s', grantee);
                EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON alembic_version TO %s',
                               grantee);
            END LOOP;
        END $$
    """)
