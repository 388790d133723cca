#!/usr/bin/env bash
# Roll the production stack's api to a new image with no failed request (`make deploy`).
#
#   scripts/deploy.sh            build the image from this checkout, then roll it out
#   scripts/deploy.sh --pull     pull API_IMAGE (a registry tag in .env) instead of building
#   ENV_FILE=/path scripts/deploy.sh   use another settings file than .env
#
# 1. Build (or pull) the image. 2. Run the migrations with it, as the one-off
# `migrate` service: they must work with the api still on the old version. 3. For
# each api service in turn (api-a, then api-b): start a container of the new image
# next to the old one, wait until it is healthy and ready, then stop the old one,
# which Gunicorn drains (in-flight requests finish, up to 20 s). Both containers
# answer to the service's name meanwhile, so the proxy always has a ready api behind
# each name, and a connection the old one refuses goes to the new one.
# On a failure the new container is removed and the old one keeps serving.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE=(docker compose -f docker-compose.prod.yml)
[ -z "${ENV_FILE:-}" ] || COMPOSE+=(--env-file "$ENV_FILE")
APIS=(api-a api-b)
# Longer than Gunicorn's graceful timeout (20 s), like the services' stop_grace_period.
STOP_TIMEOUT=30
started=$SECONDS

log() { printf 'deploy [%3ds] %s\n' $((SECONDS - started)) "$*"; }
die() {
  printf 'deploy FAILED: %s\n' "$*" >&2
  exit 1
}

pull=false
case "${1:-}" in
  --pull) pull=true ;;
  "") ;;
  *) die "usage: $0 [--pull]" ;;
esac

running() { "${COMPOSE[@]}" ps --quiet --status running "$1"; }

# wait_ready CONTAINER: its healthcheck passes and its readiness (database reachable) too.
wait_ready() {
  local container=$1 deadline=$((SECONDS + 120)) state
  while :; do
    state=$(docker inspect -f '{{.State.Status}}/{{.State.Health.Status}}' "$container")
    case "$state" in
      running/healthy)
        if docker exec "$container" python -c 'import os, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/health/ready", timeout=2)' \
          >/dev/null 2>&1; then
          return 0
        fi
        ;;
      running/*) ;;
      *) return 1 ;;
    esac
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.5
  done
}

if $pull; then
  log "pulling the image"
  "${COMPOSE[@]}" pull --quiet migrate
else
  log "building the image"
  "${COMPOSE[@]}" build --quiet \
    --build-arg REVISION="${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" migrate
fi
image_name=$("${COMPOSE[@]}" config --format json |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["services"]["migrate"]["image"])')
image=$(docker image inspect -f '{{.Id}}' "$image_name")

if [ -z "$(running api-a)$(running api-b)" ]; then
  log "no api running: starting the whole stack"
  "${COMPOSE[@]}" up --detach --wait --wait-timeout 180
  log "done in $((SECONDS - started)) s"
  exit 0
fi

log "running the migrations"
if ! output=$("${COMPOSE[@]}" up --no-deps --force-recreate --exit-code-from migrate migrate 2>&1); then
  printf '%s\n' "$output" | tail -n 30 >&2
  die "migrations failed; the api still runs the old version"
fi

for service in "${APIS[@]}"; do
  mapfile -t old < <(running "$service")
  log "$service: starting a container of the new image next to ${#old[@]} old one(s)"
  "${COMPOSE[@]}" up --detach --no-deps --no-recreate --scale "$service=$((${#old[@]} + 1))" \
    "$service" >/dev/null 2>&1 || die "$service: could not start a new container"
  new=$(comm -13 <(printf '%s\n' "${old[@]}" | sort) <(running "$service" | sort) | head -1)
  [ -n "$new" ] || die "$service: no new container"
  if ! wait_ready "$new"; then
    docker logs --tail 50 "$new" >&2 || true
    docker rm --force "$new" >/dev/null
    die "$service: the new container never became ready; removed it, the old one still serves"
  fi
  [ "$(docker inspect -f '{{.Image}}' "$new")" = "$image" ] || die "$service: new container runs another image"
  log "$service: new container ready; stopping the old one (Gunicorn drains it)"
  for container in "${old[@]}"; do
    docker stop --time "$STOP_TIMEOUT" "$container" >/dev/null
    docker rm "$container" >/dev/null
  done
done

log "done in $((SECONDS - started)) s: api-a and api-b run $image_name (${image:7:12})"
