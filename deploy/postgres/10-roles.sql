-- Least privilege, set up once when the database volume is first created (the
-- postgres image runs /docker-entrypoint-initdb.d/* as the superuser, then never again).
--   app_owner  owns the database and its tables; the `migrate` service logs in as it.
--   app        the api's role: reads and writes the tables, and nothing else (no DDL,
--              no temporary tables, no roles, no other database). A migration takes
--              back its writes on api_keys (but a key's last use) and alembic_version:
--              keys are made as app_owner (docs/auth.md).
--   postgres   the superuser: its password is removed, so it can log in only over the
--              container's local socket (`docker compose exec db psql -U postgres app`).
-- Passwords come from the container's environment (POSTGRES_PASSWORD, APP_DB_PASSWORD)
-- through psql variables, so no password is ever spliced into SQL text by hand.

\set ON_ERROR_STOP on
\getenv owner_password POSTGRES_PASSWORD
\getenv app_password APP_DB_PASSWORD
\if :{?app_password}
\else
  DO $$ BEGIN RAISE EXCEPTION 'APP_DB_PASSWORD is not set'; END $$;
\endif

CREATE ROLE app_owner LOGIN PASSWORD :'owner_password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE ROLE app LOGIN PASSWORD :'app_password'
  NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOINHERIT;

-- The owner of the database also owns its public schema (pg_database_owner), so
-- migrations may create tables there; nobody else may.
ALTER DATABASE app OWNER TO app_owner;
REVOKE ALL ON DATABASE app FROM PUBLIC;
GRANT CONNECT ON DATABASE app TO app;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO app;

-- Tables and sequences the owner creates later (every migration) are usable by the app.
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app;
ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO app;

-- Not even a temporary table in the other databases.
REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;

ALTER ROLE postgres PASSWORD NULL;
