#!/usr/bin/env bash
# Restore the production stack's database (`make restore [at=TIME]`, docs/backups.md).
#   scripts/restore.sh                              the latest state
#   scripts/restore.sh "2026-12-06 10:00:00+00"     the state at that time
#   scripts/restore.sh 20261129-031500F             a backup older than the window, to its end
# Each step is one command, logged as it starts: one that fails can be run on by hand.
# Reads ENV_FILE (default .env) like the stack; COMPOSE_PROJECT_NAME picks another project.
# FORCE=1: restore even if the newest WAL cannot be archived first (its writes are lost).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:-}
COMPOSE=(docker compose -f docker-compose.prod.yml)
[ -z "${ENV_FILE:-}" ] || COMPOSE+=(--env-file "$ENV_FILE")
log() { printf 'restore [%3ds] %s\n' "$SECONDS" "$*"; }
psql_app() { "${COMPOSE[@]}" exec -T db psql -X -t -A -U postgres -d app -c "$1"; }
db_running() { [ -n "$("${COMPOSE[@]}" ps -q --status running db)" ]; }
# Past Postgres's own minute between archive attempts after three failures in a row,
# and past a push that pgBackRest retries within its I/O timeout (a minute too).
ARCHIVE_WAIT=${ARCHIVE_WAIT:-120}

# The stack as it was, after a step that changed nothing failed.
serve_again() {
  log "nothing was changed; starting the stack again" >&2
  "${COMPOSE[@]}" up --detach --wait --wait-timeout 180 >/dev/null
  exit 1
}

# 0. A time pgBackRest cannot read (its format) or Postgres cannot (a 13th month) is
#    refused before anything is stopped: pgBackRest would refuse it once the stack is down.
TIME_FORMAT='^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?[+-][0-9]{2}(:?[0-9]{2})?$'
LABEL_FORMAT='^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$'  # `make backups` lists them
if [ -n "$target" ] && ! [[ "$target" =~ $LABEL_FORMAT ]] && { ! [[ "$target" =~ $TIME_FORMAT ]] || { db_running &&
  ! printf '%s\n' "SELECT :'target'::timestamptz" |
  "${COMPOSE[@]}" exec -T db psql -X -q -v ON_ERROR_STOP=1 -v target="$target" -U postgres -d app >/dev/null 2>&1; }; }; then
  log "FAILED: not a time pgBackRest reads: $target (write \"2026-12-06 10:00:00+00\", with the" >&2
  log "zone, or a backup's label from make backups); nothing was stopped" >&2
  exit 2
fi

# 1. Everything that writes (every service but db, redis, proxy and backup), then the
#    backup service and Postgres. The proxy keeps answering (502) meanwhile.
mapfile -t writers < <("${COMPOSE[@]}" config --services | grep -vxE 'db|redis|proxy|backup')
log "stopping ${writers[*]} backup"
"${COMPOSE[@]}" stop "${writers[@]}" backup >/dev/null 2>&1

# 1b. Every write Postgres acknowledged reaches the archive first: a restore rebuilds the
#     data directory from the archive alone, so WAL only on this volume would be lost (a
#     killed Postgres, an archive behind). If Postgres is down, it starts on its own
#     volume, whose crash recovery keeps those writes; a lost or empty volume has none.
if "${COMPOSE[@]}" run --rm --no-deps --entrypoint test backup -s /var/lib/postgresql/data/PG_VERSION; then
  log "archiving the newest WAL first"
  if ! "${COMPOSE[@]}" up --detach --no-deps --wait --wait-timeout 120 db >/dev/null 2>&1; then
    if [ "${FORCE:-}" != 1 ]; then
      # Its WAL not yet archived holds acknowledged writes: a restore would lose them.
      "${COMPOSE[@]}" logs --no-color --tail 30 db >&2 || true
      log "FAILED: db does not start on its volume within 120 s (its log is above): the" >&2
      log "writes in its WAL not yet archived would be lost. Let it start (a long crash" >&2
      log "recovery; a full disk: free space), or restore without them: FORCE=1 make restore" >&2
      log "nothing was changed; the other services are left stopped: make prod-up starts them" >&2
      exit 1
    fi
    log "WARNING: db does not start on its volume; FORCE=1: its WAL not yet archived is lost" >&2
  else
    segment=$(psql_app "SELECT pg_walfile_name(pg_switch_wal())") ||
      { log "FAILED: could not switch the WAL (the db's log says why)" >&2; serve_again; }
    archived="SELECT coalesce(last_archived_wal >= '$segment', false) FROM pg_stat_archiver"
    deadline=$((SECONDS + ARCHIVE_WAIT)) nudged=$SECONDS since=$(psql_app "SELECT now()")
    failed_since="SELECT coalesce(last_failed_time >= '$since', false) FROM pg_stat_archiver"
    until [ "$(psql_app "$archived")" = t ]; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        if [ "${FORCE:-}" = 1 ]; then
          log "WARNING: WAL up to $segment not archived; FORCE=1: restoring without it" >&2
          break
        fi
        log "FAILED: WAL up to $segment not archived after ${ARCHIVE_WAIT}s: $(psql_app \
          "SELECT format('archived up to %s; the last failed attempt: %s at %s', \
          last_archived_wal, last_failed_wal, last_failed_time) FROM pg_stat_archiver" 2>/dev/null)" >&2
        log "A restore now would lose the writes in it. Fix the archive (docs/backups.md; the" >&2
        log "db's and backup's last lines are below), or restore anyway: FORCE=1 make restore" >&2
        "${COMPOSE[@]}" logs --no-color --tail 20 db backup >&2 || true
        serve_again
      fi
      # After three failed attempts in a row the archiver sleeps a minute before the next:
      # a configuration reload wakes it, so a fault that has cleared costs seconds.
      if [ $((SECONDS - nudged)) -ge 5 ] && [ "$(psql_app "$failed_since")" = t ]; then
        psql_app "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
        nudged=$SECONDS
      fi
      sleep 0.5
    done
  fi
fi
log "stopping db"
"${COMPOSE[@]}" stop db >/dev/null 2>&1

# 2. The newest backup before the target, into the data volume (an empty or new one too).
log "restoring ${target:-the latest state}"
status=0
"${COMPOSE[@]}" run --rm --no-deps backup pgbackup restore "$target" || status=$?
# pgBackRest's codes for a restore refused before it touched anything: 75, no backup
# set before that time (pgbackup's too, for a time before the window); 29, a time it
# cannot read; 38, a postmaster.pid left in the data directory (a killed Postgres).
if [ "$status" = 75 ] || [ "$status" = 29 ]; then
  log "FAILED: no backup reaches ${target:-the latest state} (make backups shows the window)" >&2
  serve_again
elif [ "$status" = 38 ]; then
  log "FAILED: postmaster.pid is in the data directory (a Postgres killed there); make sure" >&2
  log "none runs, remove it (docs/backups.md) and run make restore again" >&2
  serve_again
elif [ "$status" != 0 ]; then
  log "FAILED: pgBackRest's restore (above): the data directory may be partly restored;" >&2
  log "run make restore again once the cause is fixed" >&2
  exit 1
fi

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

# 5. The cache holds what the database held before the restore: emptied, or the api would
#    serve rows the restore took back until they expire. (Rate limits start afresh too.)
if [ -z "$("${COMPOSE[@]}" ps -q --status running redis)" ]; then
  log "redis is not running: it starts empty (it keeps nothing on disk)"
# Its reply, not its exit status: redis-cli exits 0 on an error reply (NOAUTH) too.
elif [ "$("${COMPOSE[@]}" exec -T redis timeout 10 redis-cli FLUSHDB 2>/dev/null)" = OK ]; then
  log "cache emptied (redis FLUSHDB)"
else
  log "WARNING: redis did not answer: the cache may serve rows from before the restore until" >&2
  log "they expire (CACHE_TTL_SECONDS); empty it once redis is back: redis-cli FLUSHDB" >&2
fi

# 6. Everything up. The backup service starts a full backup by itself: the restored
#    database runs on a new timeline.
log "starting the stack"
"${COMPOSE[@]}" up --detach --wait --wait-timeout 180 >/dev/null
log "done: restored ${target:-the latest state}"
