#!/usr/bin/env bash
# Restore the Swarm stack's database (docs/swarm.md), from a manager:
#   scripts/swarm/restore.sh                              the latest state
#   scripts/swarm/restore.sh "2026-12-06 10:00:00+00"     the state at that time
#   scripts/swarm/restore.sh 20261129-031500F             an older backup, to its end
# What scripts/restore.sh does on the VM, with Swarm's verbs:
#   1. scales the api and the worker, then the backup service and the db, to 0 (the
#      proxy answers 502; no job runs against a database being replaced);
#   2. runs `pgbackup restore` as a one-off job on the db's node (its volumes are
#      node-local), with the backup service's image, settings, secret and volumes;
#   3. scales the db to 1: Postgres replays the WAL to the target and is promoted, and
#      only then passes its healthcheck (Swarm calls the task running);
#   4. runs the migration job again (a restore to before a migration), and empties the
#      cache (a one-off job: redis-cli FLUSHDB), which held rows the restore took back;
#   5. scales the backup service to 1, the api and the worker back to their replicas. The backup
#      service starts a new full backup: the restored database runs on a new timeline.
# Settings: STACK (pyproject.toml's name), RESTORE_TIMEOUT (seconds for each wait: 900).
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${1:-}
STACK=${STACK:-${SERVICE_NAME:-$(sed -n 's/^name = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}}
TIMEOUT=${RESTORE_TIMEOUT:-900}
job="${STACK}_restore"
flush="${STACK}_cache_flush"
started=$SECONDS
log() { printf 'restore [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() { log "FAILED: $*" >&2; exit 1; }
trap 'docker service rm "$job" "$flush" >/dev/null 2>&1 || true' EXIT

inspect() { docker service inspect -f "$1" "${STACK}_$2"; }
# wait_running SERVICE N: until N of its tasks run (past their healthcheck).
wait_running() {
  local deadline=$((SECONDS + TIMEOUT))
  until [ "$(docker service ps -q --filter desired-state=running "$1" |
    xargs -r docker inspect -f '{{.Status.State}}' | grep -cx running)" -ge "$2" ]; do
    if [ $SECONDS -ge $deadline ]; then
      docker service logs --raw --tail 40 "$1" >&2 2>&1 || true
      fail "$1 not running after ${TIMEOUT}s (its log is above)"
    fi
    sleep 1
  done
}
# wait_job SERVICE: until the current run of a job completes (each update is a new
# run, and older runs' tasks stay listed); fails with its log if a task fails and the
# job is not retried (the migration job is: a failed attempt is not the end).
wait_job() {
  local deadline=$((SECONDS + TIMEOUT)) iteration states once
  iteration=$(docker service inspect -f '{{.JobStatus.JobIteration.Index}}' "$1")
  once=$(docker service inspect -f '{{.Spec.TaskTemplate.RestartPolicy.Condition}}' "$1")
  while :; do
    states=$(docker service ps -q "$1" | xargs -r docker inspect \
      -f '{{.JobIteration.Index}} {{.Status.State}}' | awk -v i="$iteration" '$1 == i {print $2}')
    grep -qx complete <<<"$states" && return 0
    if { [ "$once" = none ] && grep -qxE 'failed|rejected' <<<"$states"; } || [ $SECONDS -ge $deadline ]; then
      docker service logs --raw --tail 40 "$1" >&2 2>&1 || true
      fail "$1 did not complete (its log is above)"
    fi
    sleep 1
  done
}
# wait_stopped SERVICE: until none of its containers runs.
wait_stopped() {
  local deadline=$((SECONDS + TIMEOUT))
  while docker service ps --format '{{.CurrentState}}' "$1" | grep -qE '^(Running|Starting|Preparing|Ready)'; do
    [ $SECONDS -lt $deadline ] || fail "$1 still running after ${TIMEOUT}s"
    sleep 1
  done
}

replicas=$(inspect '{{.Spec.Mode.Replicated.Replicas}}' api)
workers=$(inspect '{{.Spec.Mode.Replicated.Replicas}}' worker)
log "scaling ${STACK}_api and ${STACK}_worker to 0, then ${STACK}_backup and ${STACK}_db"
docker service scale --detach "${STACK}_api=0" "${STACK}_worker=0" >/dev/null
wait_stopped "${STACK}_api"
wait_stopped "${STACK}_worker"
docker service scale --detach "${STACK}_backup=0" "${STACK}_db=0" >/dev/null
wait_stopped "${STACK}_backup"
wait_stopped "${STACK}_db"

log "restoring ${target:-the latest state}: a one-off job on the db's node"
# The image the backup service runs (its digest, when deploy.sh resolved one).
image=$(inspect '{{.Spec.TaskTemplate.ContainerSpec.Image}}' backup)
mapfile -t env < <(inspect '{{range .Spec.TaskTemplate.ContainerSpec.Env}}{{println .}}{{end}}' backup |
  sed -n 's/^./--env=&/p')
docker service rm "$job" >/dev/null 2>&1 || true
docker service create --quiet --detach --name "$job" --mode replicated-job \
  --restart-condition none --no-healthcheck --no-resolve-image \
  --constraint node.labels.fsswarm.db==true \
  --network "${STACK}_backup" \
  --secret "source=${STACK}_backup_conf,target=pgbackrest.conf" \
  --mount "type=volume,source=${STACK}_pgdata,target=/var/lib/postgresql/data" \
  --mount "type=volume,source=${STACK}_pgbackrest,target=/var/lib/pgbackrest" \
  "${env[@]}" "$image" pgbackup restore "$target" >/dev/null
# pgBackRest's codes for a restore refused before it touched anything (75: no backup
# reaches the target, pgbackup's too for a time before the window; 29: a time it cannot
# read): the stack is scaled back as it was, unchanged.
refused() {
  local code
  code=$(docker service ps -q "$job" | xargs -r docker inspect     -f '{{.Status.ContainerStatus.ExitCode}}' 2>/dev/null | head -n 1)
  [ "$code" = 75 ] || [ "$code" = 29 ]
}
if ! (wait_job "$job"); then
  if refused; then
    docker service logs --raw "$job" 2>&1 | sed 's/^/  /'
    log "no backup reaches ${target:-the latest state} (make backups shows the window);" \
      "nothing was changed: scaling the stack back" >&2
    docker service scale --detach "${STACK}_db=1" "${STACK}_backup=1" \
      "${STACK}_api=$replicas" "${STACK}_worker=$workers" >/dev/null
  fi
  exit 1
fi
docker service logs --raw "$job" 2>&1 | sed 's/^/  /'
docker service rm "$job" >/dev/null

log "scaling ${STACK}_db to 1: it replays the WAL, then turns healthy"
docker service scale --detach "${STACK}_db=1" >/dev/null
wait_running "${STACK}_db" 1

log "migrations: the job again (upgrade to head)"
docker service update --detach --quiet --force "${STACK}_migrate" >/dev/null
wait_job "${STACK}_migrate"

log "emptying the cache: it holds rows the restore took back"
docker service rm "$flush" >/dev/null 2>&1 || true
# On Redis's own network(s), whatever the stack's version named them.
networks=()
for network in $(inspect '{{range .Spec.TaskTemplate.Networks}}{{.Target}} {{end}}' redis); do
  networks+=(--network "$network")
done
# With the password secret Redis's service has (a rotation gives it another name), read
# through REDISCLI_AUTH; the reply is checked, as redis-cli exits 0 on NOAUTH too.
password=$(inspect '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{if eq .File.Name "redis_password"}}{{.SecretName}}{{end}}{{end}}' redis)
if ! docker service create --quiet --detach --name "$flush" --mode replicated-job \
  --restart-condition none --no-healthcheck --no-resolve-image "${networks[@]}" \
  --secret "source=$password,target=redis_password" \
  "$(inspect '{{.Spec.TaskTemplate.ContainerSpec.Image}}' redis)" \
  sh -c 'REDISCLI_AUTH=$(cat /run/secrets/redis_password) timeout 10 redis-cli -h redis FLUSHDB | grep -qx OK' \
  >/dev/null || ! (TIMEOUT=60 wait_job "$flush") 2>/dev/null; then
  log "WARNING: redis did not answer: the cache may serve rows from before the restore until" >&2
  log "they expire (CACHE_TTL_SECONDS); empty it once redis is back (redis-cli FLUSHDB)" >&2
fi
docker service rm "$flush" >/dev/null 2>&1 || true

log "scaling ${STACK}_backup to 1, ${STACK}_api to $replicas and ${STACK}_worker to $workers"
docker service scale --detach "${STACK}_backup=1" "${STACK}_api=$replicas" "${STACK}_worker=$workers" >/dev/null
wait_running "${STACK}_backup" 1
wait_running "${STACK}_api" "$replicas"
wait_running "${STACK}_worker" "$workers"
log "done: restored ${target:-the latest state}"
