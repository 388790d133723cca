#!/bin/sh
# Both images' entrypoint: pgBackRest reads the stack's settings from PGBACKREST_*
# variables (docker-compose.prod.yml, x-pgbackrest). A setting left out of .env arrives
# empty, and pgBackRest refuses an empty variable: drop those, so it uses its defaults,
# for Postgres (archive_command, restore_command) and everything else this container
# runs. A repository passphrase turns encryption on (AES-256); the repository keeps it
# from its first backup on. Then the postgres image's own entrypoint.
for name in $(env | sed -n 's/^\(PGBACKREST_[A-Z0-9_]*\)=$/\1/p'); do unset "$name"; done
if [ -n "${PGBACKREST_REPO1_CIPHER_PASS:-}" ]; then
  export PGBACKREST_REPO1_CIPHER_TYPE="${PGBACKREST_REPO1_CIPHER_TYPE:-aes-256-cbc}"
fi
exec docker-entrypoint.sh "$@"
