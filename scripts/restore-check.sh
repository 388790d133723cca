#!/usr/bin/env bash
# The backup drill (`make restore-check`; its steps: docs/backups.md, "The drill"): on a
# throw-away production stack, prove that a lost database volume (the backup repository
# volume stays: the VM's disk survived) costs at most the archive_timeout of data, and
# that a point-in-time restore is exact. Bars: RPO <= 60 s, 0 rows missing at T, 0 rows
# after T. Removes all it made. Needs Docker with Compose v2, curl, and free ports
# RESTORE_HTTP_PORT/RESTORE_HTTPS_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVICE_NAME=${SERVICE_NAME:-$(sed -n 's/^name = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}  # pyproject.toml: the one place
# shellcheck source=scripts/lib/throwaway-env.sh
. scripts/lib/throwaway-env.sh

export COMPOSE_PROJECT_NAME=${RESTORE_PROJECT:-fsrestore}
HTTP_PORT=${RESTORE_HTTP_PORT:-18110}
BASE="http://localhost:${HTTP_PORT}"
WORK=$(mktemp -d)
export ENV_FILE="$WORK/env"
COMPOSE=(docker compose -f docker-compose.prod.yml --env-file "$ENV_FILE")
RPO_BAR=60
WRITE_BEFORE_T=${RESTORE_WRITE_BEFORE_T:-15}
# Past one archive_timeout (30 s): the segment holding T is archived, with commits after T.
WRITE_AFTER_T=${RESTORE_WRITE_AFTER_T:-45}
started=$SECONDS
writer_pid=""

log() { printf 'restore-check [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
  printf '\nrestore-check FAILED: %s\n' "$*" >&2
  "${COMPOSE[@]}" ps -a >&2 || true
  "${COMPOSE[@]}" logs --no-color --tail=40 db backup >&2 || true
  exit 1
}
cleanup() {
  [ -z "$writer_pid" ] || kill "$writer_pid" 2>/dev/null || true
  remove_stack "${COMPOSE[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

write_throwaway_env "$ENV_FILE" "$HTTP_PORT" "${RESTORE_HTTPS_PORT:-18473}" \
  "${RESTORE_SUBNET:-172.30.246.0/24}" "${RESTORE_PROXY_IP:-172.30.246.10}" "$SERVICE_NAME":restore-check \
  RATE_LIMIT_WRITES=0
remove_stack "${COMPOSE[@]}" # what a killed earlier run left

now() { date +%s.%N; }
# writer FILE: one item at a time through the proxy; a line per request:
# "NAME SENT ANSWERED STATUS", the times in epoch seconds.
writer() {
  local n=0 sent status
  while :; do
    n=$((n + 1))
    sent=$(now)
    status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "X-API-Key: $API_KEY" \
      -H 'content-type: application/json' --data "{\"name\":\"rc-$n\"}" "$BASE/api/v1/items" 2>/dev/null) || status=000
    echo "rc-$n $sent $(now) $status" >>"$1"
  done
}
psql_app() { "${COMPOSE[@]}" exec -T db psql -X -t -A -U postgres -d app -c "$1"; }
rows() { psql_app "SELECT name FROM items WHERE name LIKE 'rc-%'"; } # the drill's, one name a line
lose_the_database() {
  "${COMPOSE[@]}" kill -s SIGKILL db >/dev/null 2>&1
  lost_at=$(now)
  "${COMPOSE[@]}" rm --force --stop db backup >/dev/null 2>&1
  docker volume rm "${COMPOSE_PROJECT_NAME}_pgdata" >/dev/null || fail "could not delete the database volume"
}
restore() { # restore LOG WHAT [TIME]: scripts/restore.sh, as `make restore` does
  scripts/restore.sh "${@:3}" >"$WORK/$1" 2>&1 || { cat "$WORK/$1" >&2; fail "restore to $2 failed"; }
}

log "building and starting the stack"
"${COMPOSE[@]}" build --quiet migrate db backup >/dev/null || fail "image build failed"
"${COMPOSE[@]}" up --detach --wait --wait-timeout 180 >/dev/null 2>&1 || fail "stack did not become healthy"
# The writer's credential (every /api/v1 route needs one), made before anything else:
# a key lives in the database, so a restore to T keeps only the keys made before T.
# Made before the writes, so before T, it is in both states the drill restores.
API_KEY=$(make_api_key api-a restore-check items:read items:write -- "${COMPOSE[@]}") ||
  fail "could not make an API key"
deadline=$((SECONDS + 120))
until "${COMPOSE[@]}" exec -T backup pgbackup list 2>/dev/null | grep -q 'full backup'; do
  [ $SECONDS -lt $deadline ] || fail "no full backup after 120 s"
  sleep 1
done
log "first full backup taken"

# WAL generated (pg_stat_wal; not the LSN, which skips the unused end of each segment
# that archive_timeout closes early).
wal_generated() { psql_app "SELECT wal_bytes FROM pg_stat_wal"; }
archived() { "${COMPOSE[@]}" exec -T backup du -sb /var/lib/pgbackrest/archive | cut -f1; }
wal_before=$(wal_generated)
archived_before=$(archived)
writer "$WORK/writes" &
writer_pid=$!
sleep "$WRITE_BEFORE_T"
T=$(now)
T_SQL=$(date -u -d "@$T" '+%Y-%m-%d %H:%M:%S.%6N+00')
log "T = $T_SQL; writing on for $WRITE_AFTER_T s"
sleep "$WRITE_AFTER_T"
wal_bytes=$(($(wal_generated) - wal_before))
archived_bytes=$(($(archived) - archived_before))
lose_the_database
sleep 1
kill "$writer_pid" 2>/dev/null || true
wait "$writer_pid" 2>/dev/null || true
writer_pid=""
acked=$(awk '$4 == 201' "$WORK/writes" | wc -l)
rate=$(awk -v s="$WRITE_BEFORE_T" -v a="$WRITE_AFTER_T" '$4 == 201 {n++} END {printf "%.0f", n / (s + a)}' "$WORK/writes")
log "database killed and its volume deleted; $acked writes acknowledged (~$rate/s)"

restore_started=$(now)
restore restore-latest.log "the latest state"
status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H "X-API-Key: $API_KEY" "$BASE/api/v1/items?limit=1") || status=000
[ "$status" = 200 ] || fail "the api answered $status after the restore"
rto=$(awk -v a="$restore_started" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')
rows >"$WORK/rows-latest" || fail "cannot read the restored rows"
# Lost: acknowledged (201) but not restored. RPO: from the newest restored
# acknowledged write to the moment the database was lost.
read -r lost rpo < <(awk -v lost_at="$lost_at" '
  NR == FNR { present[$1] = 1; next }
  $4 == 201 { if ($1 in present) { if ($3 > newest) newest = $3 } else lost++ }
  END { printf "%d %.1f\n", lost, lost_at - newest }' "$WORK/rows-latest" "$WORK/writes")
log "restored the latest state in $rto s (RTO); $lost acknowledged rows lost, RPO $rpo s"
# The WAL's disk cost: what Postgres wrote, and what the repository keeps of it
# (zstd-compressed), per restored write (the rows whose WAL was archived) and per day at the bench's peak write rate.
read -r wal_per_write kept_per_write kept_per_day < <(awk -v w="$wal_bytes" -v k="$archived_bytes" -v n="$((acked - lost))" \
  -v r="${RESTORE_DAY_RATE:-1127}" 'BEGIN { printf "%.0f %.0f %.1f\n", w / n, k / n, k / n * r * 86400 / 2^30 }')
log "WAL: $wal_per_write bytes written per create, $kept_per_write kept in the repository; a day at ${RESTORE_DAY_RATE:-1127} creates/s: $kept_per_day GiB"

lose_the_database
restore restore-t.log T "$T_SQL"
rows >"$WORK/rows-t" || fail "cannot read the rows restored to T"
read -r before missing after < <(awk -v t="$T" '
  NR == FNR { present[$1] = 1; next }
  $4 == 201 && $3 < t { before++; if (!($1 in present)) missing++ }
  $2 > t && ($1 in present) { after++ }
  END { printf "%d %d %d\n", before, missing, after }' "$WORK/rows-t" "$WORK/writes")
log "restored to T: $before rows acknowledged before T, $missing of them missing; $after rows sent after T present"

printf '\nrestore-check: RPO %s s (bar %s s, %s acknowledged rows lost), RTO %s s, at T: %s missing, %s after T (bars 0); WAL kept %s bytes/create\n' \
  "$rpo" "$RPO_BAR" "$lost" "$rto" "$missing" "$after" "$kept_per_write"
awk -v r="$rpo" -v b="$RPO_BAR" 'BEGIN { exit !(r <= b) }' || fail "RPO $rpo s is over $RPO_BAR s"
[ "$missing" = 0 ] || fail "$missing rows acknowledged before T are missing"
[ "$after" = 0 ] || fail "$after rows sent after T were restored"
[ "$before" -gt 0 ] || fail "no row was written before T"
log "passed"
