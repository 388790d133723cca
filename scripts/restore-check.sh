#!/usr/bin/env bash
# The backup drill, `make restore-check` (its steps and bars: docs/backups.md, "The
# drill"), and with `s3` as its argument `make backup-check-s3`: the repository in an
# encrypted bucket (deploy/backup/s3-check.yml). Removes all it made. Needs Docker with
# Compose v2, curl, and free ports RESTORE_HTTP_PORT/RESTORE_HTTPS_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/throwaway-env.sh
. scripts/lib/throwaway-env.sh
needs_examples "make restore-check"

REPO=${1:-local}
WORK=$(mktemp -d)
export ENV_FILE="$WORK/env"
files=(-f docker-compose.prod.yml)
settings=(RATE_LIMIT_WRITES=0)
services=(migrate db backup) # the images to build, and the logs shown on a failure
case $REPO in
  local) project=fsrestore http_port=18110 https_port=18473 net=172.30.246 ;;
  s3)
    project=fsbackups3 http_port=18120 https_port=18483 net=172.30.245
    files+=(-f deploy/backup/s3-check.yml)
    services+=(s3)
    settings+=(BACKUP_REPO=s3 BACKUP_REPO_PATH=/app BACKUP_S3_BUCKET=backups BACKUP_S3_ENDPOINT=s3
      BACKUP_S3_PORT=9000 BACKUP_S3_REGION=us-east-1 BACKUP_S3_URI_STYLE=path BACKUP_S3_VERIFY_TLS=n
      BACKUP_S3_KEY=check BACKUP_S3_KEY_SECRET="$(random_secret)" BACKUP_CIPHER_PASS="$(random_secret)"
      BACKUP_WAL_MAX_AGE=5s)
    ;;
  *) echo "usage: $0 [s3]" >&2; exit 2 ;;
esac
export COMPOSE_PROJECT_NAME=${RESTORE_PROJECT:-$project}
HTTP_PORT=${RESTORE_HTTP_PORT:-$http_port}
BASE="http://localhost:${HTTP_PORT}"
COMPOSE=(docker compose "${files[@]}" --env-file "$ENV_FILE")
RPO_BAR=60
WRITE_BEFORE_T=${RESTORE_WRITE_BEFORE_T:-15}
# Past one archive_timeout (30 s): the segment holding T is archived, with commits after T.
WRITE_AFTER_T=${RESTORE_WRITE_AFTER_T:-45}
writer_pid=""

fail() {
  printf '\nrestore-check FAILED: %s\n' "$*" >&2
  "${COMPOSE[@]}" ps -a >&2 || true
  "${COMPOSE[@]}" logs --no-color --tail=40 "${services[@]}" >&2 || true
  exit 1
}
cleanup() {
  [ -z "$writer_pid" ] || kill "$writer_pid" 2>/dev/null || true
  remove_stack "${COMPOSE[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

write_throwaway_env "$ENV_FILE" "$HTTP_PORT" "${RESTORE_HTTPS_PORT:-$https_port}" \
  "${RESTORE_SUBNET:-$net.0/24}" "${RESTORE_PROXY_IP:-$net.10}" "$SERVICE_NAME:restore-check" "${settings[@]}"
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
psql_app() { "${COMPOSE[@]}" exec -T db psql -X -q -t -A -v ON_ERROR_STOP=1 -U postgres -d app -c "$1"; }
rows() { psql_app "SELECT name FROM items WHERE name LIKE 'rc-%'"; } # the drill's, one name a line
s3() { # s3 PYTHON: boto3 (Moto's dependency) against the S3 server, in its container
  "${COMPOSE[@]}" exec -T s3 python -c "import boto3, urllib3; urllib3.disable_warnings()
s3 = boto3.client('s3', endpoint_url='https://localhost:9000', verify=False, region_name='us-east-1',
                  aws_access_key_id='check', aws_secret_access_key='check')
$1"
}
# WAL generated (pg_stat_wal; not the LSN, which skips the unused end of each segment
# that archive_timeout closes early), and the bytes of it the repository keeps.
wal_generated() { psql_app "SELECT wal_bytes FROM pg_stat_wal"; }
archived() {
  if [ "$REPO" = s3 ]; then
    s3 "print(sum(o['Size'] for page in s3.get_paginator('list_objects_v2').paginate(
        Bucket='backups', Prefix='app/archive/') for o in page.get('Contents', [])))"
  else
    "${COMPOSE[@]}" exec -T backup du -sb /var/lib/pgbackrest/archive | cut -f1
  fi
}
lose_the_database() {
  "${COMPOSE[@]}" kill -s SIGKILL db >/dev/null 2>&1
  lost_at=$(now)
  "${COMPOSE[@]}" rm --force --stop db backup >/dev/null 2>&1
  local volumes=("${COMPOSE_PROJECT_NAME}_pgdata")
  [ "$REPO" = local ] || volumes+=("${COMPOSE_PROJECT_NAME}_pgbackrest")
  docker volume rm "${volumes[@]}" >/dev/null || fail "could not delete ${volumes[*]}"
}
restore() { # restore LOG WHAT [TIME]: scripts/restore.sh, as `make restore` does
  scripts/restore.sh "${@:3}" >"$WORK/$1" 2>&1 || { cat "$WORK/$1" >&2; fail "restore to $2 failed"; }
}
# until_within SECONDS WHAT COMMAND...: run COMMAND until it succeeds, or fail after SECONDS.
until_within() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what"
    sleep 1
  done
}

log "building and starting the stack ($REPO repository)"
"${COMPOSE[@]}" build --quiet "${services[@]}" >/dev/null || fail "image build failed"
if [ "$REPO" = s3 ]; then
  # A bucket without a passphrase is refused before anything is archived to it.
  refusal=$("${COMPOSE[@]}" run --rm --no-deps -e PGBACKREST_REPO1_CIPHER_PASS= backup true 2>&1) &&
    fail "the backup service started with a bucket and no BACKUP_CIPHER_PASS"
  grep -q 'without BACKUP_CIPHER_PASS' <<<"$refusal" || fail "no refusal for a bucket without a passphrase: $refusal"
  log "a bucket without BACKUP_CIPHER_PASS is refused"
  "${COMPOSE[@]}" up --detach --wait s3 >/dev/null 2>&1 || fail "the S3 server did not start"
  s3 "s3.create_bucket(Bucket='backups')" || fail "could not create the bucket"
fi
"${COMPOSE[@]}" up --detach --wait --wait-timeout 180 >/dev/null 2>&1 || fail "stack did not become healthy"
# The writer's credential (every /api/v1 route needs one), made before anything else:
# a key lives in the database, so a restore to T keeps only the keys made before T.
API_KEY=$(make_api_key restore-check items:read items:write -- "${COMPOSE[@]}") ||
  fail "could not make an API key"
full_backup() { "${COMPOSE[@]}" exec -T backup pgbackup list 2>/dev/null | grep -q 'full backup'; }
until_within 120 "no full backup after 120 s" full_backup
log "first full backup taken"
if [ "$REPO" = s3 ]; then
  "${COMPOSE[@]}" exec -T backup pgbackup list | grep -q 'cipher: aes-256-cbc' || fail "the repository is not encrypted"
  head=$(s3 "print(s3.get_object(Bucket='backups', Key='app/backup/app/backup.info')['Body'].read()[:8])")
  [ "$head" = "b'Salted__'" ] || fail "backup.info in the bucket is not encrypted (it begins $head)"
  log "the bucket's files are encrypted (backup.info begins $head)"
fi

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
log "database killed and its volume deleted$([ "$REPO" = local ] || echo ', the local repository volume too'); $acked writes acknowledged (~$rate/s)"

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
# The WAL's disk cost: what Postgres wrote, and what the repository keeps of it (zstd),
# per restored write (the rows whose WAL was archived) and per day at the bench's peak rate.
read -r wal_per_write kept_per_write kept_per_day < <(awk -v w="$wal_bytes" -v k="$archived_bytes" -v n="$((acked - lost))" \
  -v r="${RESTORE_DAY_RATE:-1127}" 'BEGIN { printf "%.0f %.0f %.1f\n", w / n, k / n, k / n * r * 86400 / 2^30 }')
log "WAL: $wal_per_write bytes written per create, $kept_per_write kept in the repository; a day at ${RESTORE_DAY_RATE:-1127} creates/s: $kept_per_day GiB"

# A row made after T, read through the cache: the restore to T must not serve it.
late=$(curl -sS --max-time 5 -H "X-API-Key: $API_KEY" -H 'content-type: application/json' \
  --data '{"name":"after-t-cached"}' "$BASE/api/v1/items" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$late" ] || fail "could not create an item after the latest restore"
get_late() { curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "X-API-Key: $API_KEY" "$BASE/api/v1/items/$late"; }
[ "$(get_late)" = 200 ] || fail "the item made after the latest restore cannot be read"
lose_the_database
restore restore-t.log T "$T_SQL"
[ "$(get_late)" = 404 ] || fail "after the restore to T, the cache still serves a row made after T"
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

# Postgres killed on an intact volume, its newest writes not yet archived: "the latest
# state" keeps every acknowledged one (restore.sh archives the newest WAL first).
"${COMPOSE[@]}" up --detach --wait --wait-timeout 180 >/dev/null 2>&1 || fail "stack did not come back after the restore to T"
acked_before_kill=0
for n in $(seq 1 20); do
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H "X-API-Key: $API_KEY" \
    -H 'content-type: application/json' --data "{\"name\":\"unarchived-$n\"}" "$BASE/api/v1/items") || code=000
  [ "$code" != 201 ] || acked_before_kill=$((acked_before_kill + 1))
done
"${COMPOSE[@]}" kill -s SIGKILL db >/dev/null 2>&1
restore restore-killed.log "the latest state, Postgres killed"
kept=$(psql_app "SELECT count(*) FROM items WHERE name LIKE 'unarchived-%'") || fail "cannot count the rows"
log "Postgres killed, volume intact: $kept of $acked_before_kill acknowledged writes kept by the latest restore"
[ "$acked_before_kill" -gt 0 ] && [ "$kept" = "$acked_before_kill" ] ||
  fail "$kept of $acked_before_kill acknowledged writes kept after killing Postgres"

# Refused restores change nothing and leave the stack serving: a time pgBackRest cannot
# read (before anything stops), and one before the oldest backup (after).
for refused in "yesterday|not a time pgBackRest reads" "2000-01-01 00:00:00+00|no backup reaches"; do
  reason=${refused#*|} refused=${refused%%|*}
  # A restore seconds after another stops the backup service's own full backup; one cut
  # off mid-upload can hold the bucket's next WAL push past restore.sh's default wait.
  ! ARCHIVE_WAIT=300 scripts/restore.sh "$refused" >"$WORK/restore-refused.log" 2>&1 ||
    fail "restore to '$refused' did not fail"
  grep -q "$reason" "$WORK/restore-refused.log" ||
    { cat "$WORK/restore-refused.log" >&2; fail "restore to '$refused' was refused, but not because '$reason'"; }
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H "X-API-Key: $API_KEY" "$BASE/api/v1/items?limit=1") || code=000
  [ "$code" = 200 ] || { cat "$WORK/restore-refused.log" >&2; fail "after a refused restore to '$refused' the api answered $code"; }
done
log "restores to an unreadable time and to before the oldest backup: refused, the stack serving"

if [ "$REPO" = s3 ]; then
  # The bucket unreachable under writes: the WAL backlog shows in the metrics, and the
  # backup service turns unhealthy (BACKUP_WAL_MAX_AGE=5s here).
  "${COMPOSE[@]}" stop s3 >/dev/null 2>&1
  psql_app "CREATE TABLE outage AS SELECT generate_series(1, 1000) AS n; SELECT pg_switch_wal()" >/dev/null
  backlog_reported() { [[ "$("${COMPOSE[@]}" exec -T backup pgbackup check)" == *"WAL segments wait"* ]]; }
  until_within 120 "pgbackup check did not report the WAL backlog within 120 s" backlog_reported
  metric() {
    "${COMPOSE[@]}" exec -T backup python3 -c "import urllib.request
print(urllib.request.urlopen('http://localhost:9188/metrics').read().decode())" | sed -n "s/^$1 //p"
  }
  backlog=$(metric pgbackup_wal_ready_segments)
  # pgbackup_wal_archive_failing turns 1 only when archive-push gives up: pgBackRest
  # retries an unreachable bucket for minutes first.
  failing=$(metric pgbackup_wal_archive_failing)
  awk -v b="$backlog" 'BEGIN { exit !(b >= 1) }' || fail "metrics: a WAL backlog of '$backlog'"
  unhealthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q backup)")" = unhealthy ]; }
  until_within 150 "the backup service did not turn unhealthy within 150 s" unhealthy
  log "S3 server stopped: backup unhealthy ($("${COMPOSE[@]}" exec -T backup pgbackup check || true));" \
    "pgbackup_wal_archive_failing $failing, pgbackup_wal_ready_segments $backlog"
fi
log "passed"
