#!/usr/bin/env bash
# Deploy (or upgrade) deploy/swarm/stack.yml to the Swarm this Docker client talks to:
#   scripts/swarm/deploy.sh IMAGE
# Swarm has no "start this service after that job": this script is the ordering.
#   1. The migration job runs with IMAGE while the api keeps its current image
#      (on a first deploy the api has no replicas yet), and must complete.
#   2. Only then do the api and the worker (the api's image, its own command) roll out
#      to IMAGE: start-first, one task at a time, rolled back by Swarm itself if a new
#      task fails or never turns healthy. A stopping worker finishes its jobs first.
# Migrations must therefore suit the old code too (expand, then contract later).
# Exits non-zero if the job fails or the update is rolled back.
#
# The secrets must exist first (docs/swarm.md): ${STACK}_postgres_password (app_owner's),
# ${STACK}_app_db_password (the api role's), ${STACK}_database_url (the api's, as app),
# ${STACK}_migrate_database_url (the migrations', as app_owner), ${STACK}_redis_password
# (Redis's), ${STACK}_redis_url (the app's, carrying it) and ${STACK}_backup_conf
# (pgBackRest's secret options). Settings: STACK (pyproject.toml's name),
# DOMAIN (required: the API's host name, or :80 for plain HTTP), EDGE_SUBNET, HTTP_PORT (80), HTTPS_PORT (443), API_REPLICAS (2), WORKER_REPLICAS (1),
# LOG_LEVEL (INFO), MAX_BODY_SIZE (1048576: the proxy's 413 above it),
# DB_IMAGE and BACKUP_IMAGE (<name>-postgres:17 and <name>-backup:17: deploy/backup/Dockerfile's
# two targets, pushed where the db's node pulls from), the BACKUP_* settings (docs/backups.md),
# RESOLVE_IMAGE (always; `never` when every node already holds IMAGE, no registry),
# AUTH_ISSUER, AUTH_AUDIENCE, AUTH_JWKS_URL, AUTH_ALGORITHMS, RATE_LIMIT_AUTH_FAILURES
# (docs/auth.md; AUTH_ISSUER empty: API keys alone).
set -euo pipefail
cd "$(dirname "$0")/../../deploy/swarm"

IMAGE=${1:?usage: deploy.sh IMAGE}
# Required, not defaulted: an upgrade run without it would switch production to plain HTTP.
: "${DOMAIN:?deploy: set DOMAIN to the host name of the API, or to :80 for plain HTTP}"
export DOMAIN
name=${SERVICE_NAME:-$(sed -n 's/^name = "\(.*\)"$/\1/p' ../../pyproject.toml | head -n 1)}
export STACK=${STACK:-$name}
export DB_IMAGE=${DB_IMAGE:-$name-postgres:17} BACKUP_IMAGE=${BACKUP_IMAGE:-$name-backup:17}
export API_REPLICAS=${API_REPLICAS:-2} WORKER_REPLICAS=${WORKER_REPLICAS:-1}
# A stack's networks are made once, and `docker stack deploy` leaves an existing one as it
# is: its edge overlay's subnet is the one the api must trust for X-Forwarded-* (a stack
# made before EDGE_SUBNET existed has another). Trusting any other would make every
# client look like the proxy, one address for the per-address limits.
edge=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' \
  "${STACK}_edge" 2>/dev/null | awk '{print $1}') || true # none yet: a first deploy
if [ -n "$edge" ] && [ -n "${EDGE_SUBNET:-}" ] && [ "$edge" != "$EDGE_SUBNET" ]; then
  echo "deploy: EDGE_SUBNET=$EDGE_SUBNET, but ${STACK}_edge exists with $edge, and a deploy" \
    "cannot change it: unset EDGE_SUBNET, or remove the stack first" >&2
  exit 1
fi
export EDGE_SUBNET=${edge:-${EDGE_SUBNET:-10.250.10.0/24}}
export CADDYFILE_DIGEST POSTGRES_INIT_DIGEST
CADDYFILE_DIGEST=$(sha256sum Caddyfile | cut -c1-12)
POSTGRES_INIT_DIGEST=$(cat 05-app-password.sh ../postgres/10-roles.sql | sha256sum | cut -c1-12)
TIMEOUT=${DEPLOY_TIMEOUT:-300}

log() { printf 'deploy [%s] %s\n' "$(date +%T)" "$*"; }
stack_deploy() { # stack_deploy API_IMAGE MIGRATE_IMAGE API_REPLICAS WORKER_REPLICAS
  API_IMAGE=$1 MIGRATE_IMAGE=$2 API_REPLICAS=$3 WORKER_REPLICAS=$4 \
    docker stack deploy --detach=true --resolve-image "${RESOLVE_IMAGE:-always}" \
    --prune -c stack.yml "$STACK" >/dev/null
}

for secret in database_url migrate_database_url postgres_password app_db_password \
  redis_password redis_url backup_conf; do
  docker secret inspect "${STACK}_${secret}" >/dev/null 2>&1 ||
    { echo "deploy: no secret ${STACK}_${secret}: see docs/swarm.md" >&2; exit 1; }
done

# Every update of a job service, even one that changes nothing, is a new run of it.
wait_for_migration() {
  local service="${STACK}_migrate" deadline=$((SECONDS + TIMEOUT)) iteration states
  iteration=$(docker service inspect -f '{{.JobStatus.JobIteration.Index}}' "$service")
  while :; do
    # The states of this run's tasks (older runs' tasks stay listed).
    states=$(docker service ps -q "$service" | xargs -r docker inspect \
      -f '{{.JobIteration.Index}} {{.Status.State}}' | awk -v i="$iteration" '$1 == i {print $2}')
    grep -qx complete <<<"$states" && return 0
    if [ $SECONDS -ge $deadline ]; then
      log "migration not complete after ${TIMEOUT}s; its last logs:"
      docker service logs --tail 30 "$service" >&2 || true
      return 1
    fi
    sleep 1
  done
}

# wait_for_rollout NAME REPLICAS: until the service is at REPLICAS tasks on IMAGE, or
# Swarm gives up.
wait_for_rollout() {
  local name=$1 replicas=$2 service="${STACK}_$1" deadline=$((SECONDS + TIMEOUT)) state running want cause=
  while :; do
    state=$(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$service")
    case $state in
      rollback_started) # its message names the cause; the later ones do not
        [ -n "${cause:-}" ] || { cause=$(docker service inspect -f '{{.UpdateStatus.Message}}' "$service"); log "$cause"; } ;;
      rollback_completed | rollback_paused | paused)
        log "the $name update ended as $state: $(docker service inspect -f '{{.UpdateStatus.Message}}' "$service")"
        return 1 ;;
    esac
    # The tasks running the service's current image, compared in full: `service ps`
    # shortens its Image column (no digest, no docker.io/), which never matched an
    # IMAGE given with either, and the deploy then timed out after it had succeeded.
    want=$(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$service")
    running=$(docker service ps -q --filter desired-state=running "$service" |
      xargs -r docker inspect --type task -f '{{.Spec.ContainerSpec.Image}} {{.Status.State}}' |
      grep -cxF "$want running" || true)
    if [ "$running" -ge "$replicas" ] && [[ $state == "" || $state == completed ]]; then
      return 0
    fi
    [ $SECONDS -lt $deadline ] || { log "$name not rolled out after ${TIMEOUT}s (state: ${state:-none})"; return 1; }
    sleep 1
  done
}

current=$(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK}_api" 2>/dev/null || true)
# Kept with the digest --resolve-image pinned: without it, a tag pushed again (CI's :main)
# would resolve to the new build, and the api would roll onto it beside the migration.
if [ -z "$current" ]; then
  # Nor workers: the queue's tables do not exist before the migration.
  log "first deploy: infrastructure and the migration job, no api or worker replicas yet"
  stack_deploy "$IMAGE" "$IMAGE" 0 0
else
  log "migration job on $IMAGE; the api and the worker stay on $current"
  stack_deploy "$current" "$IMAGE" "$API_REPLICAS" "$WORKER_REPLICAS"
fi
wait_for_migration
log "migration complete; rolling the api and the worker out to $IMAGE"
stack_deploy "$IMAGE" "$IMAGE" "$API_REPLICAS" "$WORKER_REPLICAS"
# Both roll at once (separate services); a failed worker rollout fails the deploy too.
failed=()
wait_for_rollout api "$API_REPLICAS" || failed+=(api)
wait_for_rollout worker "$WORKER_REPLICAS" || failed+=(worker)
if [ ${#failed[@]} = 0 ]; then
  log "api: $API_REPLICAS replicas on $IMAGE; worker: $WORKER_REPLICAS"
  exit 0
fi
# Swarm rolled back only the service that failed. The other goes back too, so the api
# and the worker run one version, the one from before this deploy (which suits the
# migrated schema: migrations suit the old code).
for name in api worker; do
  [[ " ${failed[*]} " == *" $name "* ]] && continue
  log "rolling the $name back too, to the version the ${failed[0]} runs again"
  docker service rollback --detach=false --quiet "${STACK}_$name" >/dev/null ||
    log "the $name's rollback did not complete: docker service ps ${STACK}_$name"
done
for name in api worker; do
  log "$name now on $(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK}_$name")"
done
log "deploy of $IMAGE failed (${failed[*]}); the migration stays applied"
exit 1
