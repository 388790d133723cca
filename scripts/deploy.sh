#!/usr/bin/env bash
# Roll the production stack's api to a new image with no failed request (`make deploy`).
#
#   scripts/deploy.sh            build the image from this checkout, then roll it out
#   scripts/deploy.sh --pull     pull API_IMAGE (a registry tag in .env) instead of building
#   ENV_FILE=/path scripts/deploy.sh   use another settings file than .env
#
# 1. Build (or pull) the image. 2. Run the migrations with it, as the one-off
# `migrate` service: they must work with the api still on the old version. 3. Replace
# the api services one at a time (api-a, then api-b): stop the old container, which
# Gunicorn drains (in-flight requests finish, up to 20 s), start the new one, wait
# until it answers /health/ready. The other api serves everything meanwhile: the
# proxy tries a refused connection there at once, and its health checks keep the
# new container out of rotation until it answers, so no request waits on an api that
# is still booting. The new api-a serves before the old api-b drains. On a failure
# the deploy stops there and the other api keeps serving; fix it and run it again.
set -euo pipefail
cd "$(dirname "$0")/.."

# COMPOSE_FILE, when set, names the files instead (make chaos adds its overrides: a
# deploy must not drop them from the containers it replaces).
COMPOSE=(docker compose)
[ -n "${COMPOSE_FILE:-}" ] || COMPOSE+=(-f docker-compose.prod.yml)
[ -z "${ENV_FILE:-}" ] || COMPOSE+=(--env-file "$ENV_FILE")
APIS=(api-a api-b)
# Seconds for the proxy to notice an api stopped or started: twice its health
# check interval (deploy/Caddyfile).
PROXY_SETTLE=2
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
        if docker exec "$container" python -c 'import urllib.request
urllib.request.urlopen("http://127.0.0.1:8000/health/ready", timeout=2)' >/dev/null 2>&1; then
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

# An interrupted deploy (Ctrl-C, an SSH session that drops: SIGHUP) must not leave an
# api stopped: `unless-stopped` would keep it stopped through a reboot too.
replacing=
interrupted() {
  if [ -n "$replacing" ]; then
    # Recreated: stopped, or still running but draining (out of rotation for good).
    log "interrupted: starting $replacing again before exiting" >&2
    "${COMPOSE[@]}" up --detach --no-deps --force-recreate "$replacing" >/dev/null 2>&1 || true
  fi
  exit 130
}
trap interrupted INT HUP TERM

for service in "${APIS[@]}"; do
  replacing=$service
  log "$service: stopping it (Gunicorn drains it: in-flight requests finish)"
  # Out of rotation before SIGTERM, where the app supports it: /health/ready answers
  # 503 while /tmp/draining exists, and the proxy's next check stops sending to it.
  docker exec "$(running "$service")" touch /tmp/draining 2>/dev/null && sleep "$PROXY_SETTLE"
  "${COMPOSE[@]}" stop "$service" >/dev/null 2>&1
  # Let the proxy's health check mark it down, so that the new container gets no
  # request before it passes a check of its own.
  sleep "$PROXY_SETTLE"
  "${COMPOSE[@]}" up --detach --no-deps --force-recreate "$service" >/dev/null 2>&1 ||
    die "$service: could not start the new container; the other api serves"
  replacing=
  new=$(running "$service")
  if ! wait_ready "$new"; then
    docker logs --tail 50 "$new" >&2 || true
    die "$service: the new container never became ready; the other api serves"
  fi
  [ "$(docker inspect -f '{{.Image}}' "$new")" = "$image" ] || die "$service: runs another image"
  # In rotation after the proxy's next passing check: only then touch the other api.
  sleep "$PROXY_SETTLE"
  log "$service: the new container is ready and in rotation"
done

# The worker: stop (SIGTERM: it finishes its jobs within its grace period; one cut
# short runs again from its heartbeat), then start on the new image. Jobs wait in
# Postgres meanwhile: none is lost, they start a few seconds later.
log "worker: replacing it (it finishes the jobs it runs first)"
"${COMPOSE[@]}" up --detach --no-deps --force-recreate --wait --wait-timeout 120 worker >/dev/null 2>&1 ||
  die "worker: the new container did not become healthy; jobs wait in the queue"
[ "$(docker inspect -f '{{.Image}}' "$(running worker)")" = "$image" ] || die "worker: runs another image"

log "done in $((SECONDS - started)) s: api-a, api-b and the worker run $image_name (${image:7:12})"
