#!/usr/bin/env bash
# Off-VM backups, proven (`make backup-check-s3`, docs/backups.md): the production
# stack's db and backup services with BACKUP_REPO=s3 and a repository passphrase,
# against Moto's S3 server (deploy/backup/s3-check.yml). Each step logs what it proved.
# Removes all it made.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVICE_NAME=${SERVICE_NAME:-$(sed -n 's/^name = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}  # pyproject.toml: the one place
# shellcheck source=scripts/lib/throwaway-env.sh
. scripts/lib/throwaway-env.sh

export COMPOSE_PROJECT_NAME=${S3_CHECK_PROJECT:-fsbackups3}
WORK=$(mktemp -d)
export ENV_FILE="$WORK/env"
COMPOSE=(docker compose -f docker-compose.prod.yml -f deploy/backup/s3-check.yml --env-file "$ENV_FILE")
started=$SECONDS

log() { printf 'backup-check-s3 [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
  printf '\nbackup-check-s3 FAILED: %s\n' "$*" >&2
  "${COMPOSE[@]}" ps -a >&2 || true
  "${COMPOSE[@]}" logs --no-color --tail=40 db backup s3 >&2 || true
  exit 1
}
cleanup() {
  remove_stack "${COMPOSE[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

write_throwaway_env "$ENV_FILE" 18120 18483 172.30.245.0/24 172.30.245.10 "$SERVICE_NAME":backup-check-s3 \
  BACKUP_REPO=s3 BACKUP_REPO_PATH=/app BACKUP_S3_BUCKET=backups BACKUP_S3_ENDPOINT=s3 \
  BACKUP_S3_PORT=9000 BACKUP_S3_REGION=us-east-1 BACKUP_S3_URI_STYLE=path BACKUP_S3_VERIFY_TLS=n \
  BACKUP_S3_KEY=check BACKUP_S3_KEY_SECRET="$(random_secret)" BACKUP_CIPHER_PASS="$(random_secret)" \
  BACKUP_WAL_MAX_AGE=5s
remove_stack "${COMPOSE[@]}"

s3() { # s3 PYTHON: boto3 (Moto's dependency) against the server, in its container
  "${COMPOSE[@]}" exec -T s3 python -c "import boto3, urllib3; urllib3.disable_warnings()
s3 = boto3.client('s3', endpoint_url='https://localhost:9000', verify=False, region_name='us-east-1',
                  aws_access_key_id='check', aws_secret_access_key='check')
$1"
}
psql_db() { "${COMPOSE[@]}" exec -T db psql -X -q -t -A -v ON_ERROR_STOP=1 -U postgres -d app -c "$1"; }

log "starting the S3 server and making the bucket"
"${COMPOSE[@]}" up --detach --wait --build s3 >/dev/null 2>&1 || fail "the S3 server did not start"
s3 "s3.create_bucket(Bucket='backups')" || fail "could not create the bucket"

log "starting db and backup with BACKUP_REPO=s3"
"${COMPOSE[@]}" up --detach --wait --build db backup >/dev/null 2>&1 || fail "db and backup did not become healthy"
deadline=$((SECONDS + 120))
until "${COMPOSE[@]}" exec -T backup pgbackup list 2>/dev/null | grep -q 'full backup'; do
  [ $SECONDS -lt $deadline ] || fail "no full backup in the bucket after 120 s"
  sleep 1
done
"${COMPOSE[@]}" exec -T backup pgbackup list | grep -q 'cipher: aes-256-cbc' || fail "the repository is not encrypted"
head=$(s3 "print(s3.get_object(Bucket='backups', Key='app/backup/app/backup.info')['Body'].read()[:8])")
[ "$head" = "b'Salted__'" ] || fail "backup.info in the bucket is not encrypted (it begins $head)"
log "full backup in the bucket; its files are encrypted (backup.info begins $head)"

psql_db "CREATE TABLE s3_check (n int); INSERT INTO s3_check SELECT generate_series(1, 1000)"
psql_db "SELECT pg_switch_wal()" >/dev/null
deadline=$((SECONDS + 60))
until [ "$(psql_db "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")" = 0 ]; do
  [ $SECONDS -lt $deadline ] || fail "the WAL was not archived to the bucket within 60 s"
  sleep 0.5
done
log "1000 rows written and their WAL archived"

"${COMPOSE[@]}" kill -s SIGKILL db >/dev/null 2>&1
"${COMPOSE[@]}" rm --force --stop db backup >/dev/null 2>&1
docker volume rm "${COMPOSE_PROJECT_NAME}_pgdata" "${COMPOSE_PROJECT_NAME}_pgbackrest" >/dev/null ||
  fail "could not delete the volumes"
log "database and local backup volumes deleted: only the bucket is left"

restore_started=$SECONDS
"${COMPOSE[@]}" run --rm --no-deps backup pgbackup restore >"$WORK/restore.log" 2>&1 || {
  cat "$WORK/restore.log" >&2
  fail "restore from the bucket failed"
}
"${COMPOSE[@]}" up --detach --no-deps db >/dev/null 2>&1
deadline=$((SECONDS + 120))
until [ "$(psql_db 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
  [ $SECONDS -lt $deadline ] || fail "the database did not finish recovery within 120 s"
  sleep 0.5
done
rows=$(psql_db "SELECT count(*) FROM s3_check")
[ "$rows" = 1000 ] || fail "restored $rows rows of 1000"
log "restored from the bucket in $((SECONDS - restore_started)) s: all 1000 rows back"

"${COMPOSE[@]}" up --detach --no-deps backup >/dev/null 2>&1 || fail "the backup service did not start"
"${COMPOSE[@]}" stop s3 >/dev/null 2>&1
psql_db "INSERT INTO s3_check SELECT generate_series(1001, 2000)"
psql_db "SELECT pg_switch_wal()" >/dev/null
metrics() {
  "${COMPOSE[@]}" exec -T backup python3 -c \
    "import urllib.request; print(urllib.request.urlopen('http://localhost:9188/metrics').read().decode())"
}
deadline=$((SECONDS + 120))
while :; do
  problem=$("${COMPOSE[@]}" exec -T backup pgbackup check || true)
  [[ "$problem" != *"WAL segments wait"* ]] || break
  [ $SECONDS -lt $deadline ] || fail "pgbackup check did not report the WAL backlog within 120 s (it says: $problem)"
  sleep 2
done
backlog=$(metrics | sed -n 's/^pgbackup_wal_ready_segments //p')
failing=$(metrics | sed -n 's/^pgbackup_wal_archive_failing //p')
# (pgbackup_wal_archive_failing turns 1 only when archive-push gives up: pgBackRest
# retries an unreachable bucket for minutes first.)
awk -v b="$backlog" 'BEGIN { exit !(b >= 1) }' || fail "metrics: a WAL backlog of '$backlog'"
deadline=$((SECONDS + 150))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q backup)")" = unhealthy ]; do
  [ $SECONDS -lt $deadline ] || fail "the backup service did not turn unhealthy within 150 s"
  sleep 2
done
log "S3 server stopped: backup unhealthy ($problem); pgbackup_wal_archive_failing $failing, pgbackup_wal_ready_segments $backlog"
log "passed"
