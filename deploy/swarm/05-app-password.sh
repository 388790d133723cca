# shellcheck shell=bash
# Sourced by the postgres image's entrypoint when it creates a new data directory, just
# before 10-roles.sql (deploy/postgres/): that SQL reads the app role's password from
# APP_DB_PASSWORD, which Swarm gives as a secret file, never as an environment variable.
APP_DB_PASSWORD=$(cat "$APP_DB_PASSWORD_FILE")
export APP_DB_PASSWORD
