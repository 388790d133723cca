#!/bin/sh
# Both images' entrypoint. A PGBACKREST_* setting left out of .env arrives empty
# (docker-compose.prod.yml, x-pgbackrest), and pgBackRest refuses an empty variable:
# drop those, so it uses its defaults, in Postgres's archive_command too. A repository
# passphrase turns encryption on. Then the postgres image's own entrypoint.
for name in $(env | sed -n 's/^\(PGBACKREST_[A-Z0-9_]*\)=$/\1/p'); do unset "$name"; done
if [ -n "${PGBACKREST_REPO1_CIPHER_PASS:-}" ]; then
  export PGBACKREST_REPO1_CIPHER_TYPE="${PGBACKREST_REPO1_CIPHER_TYPE:-aes-256-cbc}"
fi
exec docker-entrypoint.sh "$@"
