#!/usr/bin/env bash
# Restore the production stack's database (`make restore [at=TIME]`; each step, and
# how to run it by hand: docs/backups.md). The writers are every service but db, redis,
# proxy and backup.
#   scripts/restore.sh                              the latest state
#   scripts/restore.sh "2026-12-06 10:00:00+00"     the state at that time
# Reads ENV_FILE (default .env) like the stack; COMPOSE_PROJECT_NAME picks another project.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-}
COMPOSE=(docker compose -f docker-compose.prod.yml)
[ -z "${ENV_FILE:-}" ] || COMPOSE+=(--env-file "$ENV_FILE")
started=$SECONDS
log() { printf 'restore [%3ds] %s\n' $((SECONDS - started)) "$*"; }

mapfile -t writers < <("${COMPOSE[@]}" config --services | grep -vxE 'db|redis|proxy|backup')
log "stopping ${writers[*]} backup db"
"${COMPOSE[@]}" stop "${writers[@]}" backup >/dev/null 2>&1
"${COMPOSE[@]}" stop db >/dev/null 2>&1

log "restoring ${target:-the latest state}"
"${COMPOSE[@]}" run --rm --no-deps backup pgbackup restore "$target"

log "starting db: replaying the WAL"
"${COMPOSE[@]}" up --detach --no-deps db >/dev/null 2>&1
# hot_standby is off while it replays: no connection until it is promoted.
until [ "$("${COMPOSE[@]}" exec -T db psql -X -t -A -U postgres -d app -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
  if [ -z "$("${COMPOSE[@]}" ps -q --status running db)" ]; then
    "${COMPOSE[@]}" logs --no-color --tail 40 db >&2
    log "FAILED: the database stopped during recovery (its log is above)" >&2
    exit 1
  fi
  sleep 0.5
done
log "db promoted: $("${COMPOSE[@]}" exec -T db psql -X -t -A -U postgres -d app -c \
  "SELECT 'timeline ' || timeline_id FROM pg_control_checkpoint()")"

log "migrations: upgrade to head, then alembic check"
"${COMPOSE[@]}" run --rm --no-deps migrate >/dev/null
"${COMPOSE[@]}" run --rm --no-deps migrate alembic check

log "starting the stack"
"${COMPOSE[@]}" up --detach --wait --wait-timeout 180 >/dev/null
log "done: restored ${target:-the latest state}"
