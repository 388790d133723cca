#!/bin/sh
# Both images' entrypoint. A PGBACKREST_* setting left out of .env arrives empty
# (docker-compose.prod.yml, x-pgbackrest), and pgBackRest refuses an empty variable:
# drop those, so it uses its defaults, in Postgres's archive_command too. A repository
# passphrase turns encryption on. Then the postgres image's own entrypoint.
for name in $(env | sed -n 's/^\(PGBACKREST_[A-Z0-9_]*\)=$/\1/p'); do unset "$name"; done
if [ -n "${PGBACKREST_REPO1_CIPHER_PASS:-}" ]; then
  export PGBACKREST_REPO1_CIPHER_TYPE="${PGBACKREST_REPO1_CIPHER_TYPE:-aes-256-cbc}"
fi
# A bucket is someone else's disk: every backup and WAL segment would land there in
# clear. Refuse, unless the passphrase or a cipher type is in a config file (Swarm's
# backup_conf secret) or a cipher type is set (BACKUP_CIPHER_TYPE=none keeps a repository
# that was made unencrypted).
if [ "${PGBACKREST_REPO1_TYPE:-posix}" != posix ] && [ -z "${PGBACKREST_REPO1_CIPHER_PASS:-}" ] &&
  [ -z "${PGBACKREST_REPO1_CIPHER_TYPE:-}" ] &&
  ! grep -Eqs '^[[:space:]]*repo1-cipher-(pass|type)[[:space:]]*=[[:space:]]*[^[:space:]]' \
    "${PGBACKREST_CONFIG:-/etc/pgbackrest/pgbackrest.conf}"; then
  echo "refusing to start: BACKUP_REPO=${PGBACKREST_REPO1_TYPE} without BACKUP_CIPHER_PASS would" \
    "store every backup unencrypted: set it (docs/backups.md; on Swarm, repo1-cipher-pass" \
    "in the backup_conf secret), or BACKUP_CIPHER_TYPE=none for a repository made unencrypted" >&2
  exit 78
fi
exec docker-entrypoint.sh "$@"
