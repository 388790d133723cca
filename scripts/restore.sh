#!/usr/bin/env bash
# Restore the production stack's database (`make restore [at=TIME]`, docs/backups.md).
#   scripts/restore.sh                              the latest state
#   scripts/restore.sh "2026-12-06 10:00:00+00"     the state at that time
# Each step is one command, logged as it starts: one that fails can be run on by hand.
# Reads ENV_FILE (default .env) like the stack; COMPOSE_PROJECT_NAME picks another project.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-}
COMPOSE=(docker compose -f docker-compose.prod.yml)
[ -z "${ENV_FILE:-}" ] || COMPOSE+=(--env-file "$ENV_FILE")
log() { printf 'restore [%3ds] %s\n' "$SECONDS" "$*"; }
psql_app() { "${COMPOSE[@]}" exec -T db psql -X -t -A -U postgres -d app -c "$1"; }

# 1. Everything that writes (every service but db, redis, proxy and backup), then the
#    backup service and Postgres. The proxy keeps answering (502) meanwhile.
mapfile -t writers < <("${COMPOSE[@]}" config --services | grep -vxE 'db|redis|proxy|backup')
log "stopping ${writers[*]} backup db"
"${COMPOSE[@]}" stop "${writers[@]}" backup >/dev/null 2>&1
"${COMPOSE[@]}" stop db >/dev/null 2>&1

# 2. The newest backup before the target, into the data volume (an empty or new one too).
log "restoring ${target:-the latest state}"
"${COMPOSE[@]}" run --rm --no-deps backup pgbackup restore "$target"

# 3. Postgres replays the archived WAL to the target, then is promoted; hot_standby is
#    off meanwhile, so it accepts no connection until then.
log "starting db: replaying the WAL"
"${COMPOSE[@]}" up --detach --no-deps db >/dev/null 2>&1
until [ "$(psql_app 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
  if [ -z "$("${COMPOSE[@]}" ps -q --status running db)" ]; then
    "${COMPOSE[@]}" logs --no-color --tail 40 db >&2
    log "FAILED: the database stopped during recovery (its log is above)" >&2
    exit 1
  fi
  sleep 0.5
done
log "db promoted: $(psql_app "SELECT 'timeline ' || timeline_id FROM pg_control_checkpoint()")"

# 4. A restore to before a migration: migrate to head, then check the schema matches the code.
log "migrations: upgrade to head, then alembic check"
"${COMPOSE[@]}" run --rm --no-deps migrate >/dev/null
"${COMPOSE[@]}" run --rm --no-deps migrate alembic check

# 5. Everything up. The backup service starts a full backup by itself: the restored
#    database runs on a new timeline.
log "starting the stack"
"${COMPOSE[@]}" up --detach --wait --wait-timeout 180 >/dev/null
log "done: restored ${target:-the latest state}"
