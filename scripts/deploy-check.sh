#!/usr/bin/env bash
# Zero-downtime deploy, proven (`make deploy-check`): start the production stack as a
# Compose project of its own with throw-away secrets (through scripts/deploy.sh, as a
# first deploy), drive steady load through the proxy (scripts/deploy_load.py), then
#   1. deploy a new build with scripts/deploy.sh: not one request may fail;
#   2. kill -9 a Gunicorn worker under read load: the proxy resends the reads it
#      dropped, so again not one may fail.
# Prints each phase's figures (requests, failures, latency, duration) and removes
# everything it made, volumes and images included, whatever happens.
#
# Needs Docker with Compose v2, python3 and free ports DEPLOY_HTTP_PORT/DEPLOY_HTTPS_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/throwaway-env.sh
. scripts/lib/throwaway-env.sh

export COMPOSE_PROJECT_NAME=${DEPLOY_PROJECT:-fsdeploy}
HTTP_PORT=${DEPLOY_HTTP_PORT:-18090}
BASE="http://localhost:${HTTP_PORT}"
IMAGE=$SERVICE_NAME:deploy-check
WORK=$(mktemp -d)
export ENV_FILE="$WORK/env"
COMPOSE=(docker compose -f docker-compose.prod.yml --env-file "$ENV_FILE")
load_pid=""
images=()
failed=()

fail() {
  printf '\ndeploy-check FAILED: %s\n' "$*" >&2
  "${COMPOSE[@]}" ps -a >&2 || true
  printf '\n--- errors the proxy logged, and its health checks ---\n' >&2
  "${COMPOSE[@]}" logs --no-color proxy | grep -E '"status":5|"level":"(error|warn)"|health_checker' | tail -30 >&2 || true
  exit 1
}
cleanup() {
  [ -z "$load_pid" ] || kill "$load_pid" 2>/dev/null || true
  remove_stack "${COMPOSE[@]}"
  for image in "${images[@]}"; do docker image rm --force "$image" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

write_throwaway_env "$ENV_FILE" "$HTTP_PORT" "${DEPLOY_HTTPS_PORT:-18453}" \
  "${DEPLOY_SUBNET:-172.30.249.0/24}" "${DEPLOY_PROXY_IP:-172.30.249.10}" "$IMAGE" \
  RATE_LIMIT_WRITES=0
remove_stack "${COMPOSE[@]}" # what a killed earlier run left

# start_load NAME [deploy_load.py options]: steady load in the background.
start_load() {
  local name=$1
  shift
  python3 scripts/deploy_load.py "$BASE" "$@" >"$WORK/$name.json" 2>"$WORK/$name.log" &
  load_pid=$!
}
# stop_load NAME [TOLERATED]: stop it and print its summary; a failed request fails
# the check at the end (the next phase still runs, for its figures), except failures
# of the kind TOLERATED.
stop_load() {
  local name=$1 tolerated=${2:-none}
  kill -TERM "$load_pid"
  wait "$load_pid" || fail "the load generator failed: $(cat "$WORK/$name.log")"
  load_pid=""
  python3 - "$WORK/$name.json" "$name" "$tolerated" <<'PY' || failed+=("$name")
import json, sys
s = json.load(open(sys.argv[1]))
lat = s["latency_ms"]
print(f"deploy-check        {sys.argv[2]}: {s['requests']} requests in {s['seconds']} s, "
      f"{s['failed']} failed {s['failures'] or ''}, latency p50 {lat['p50']} ms, "
      f"p99 {lat['p99']} ms, max {lat['max']} ms")
print(f"deploy-check        statuses: {s['statuses']}")
print(f"deploy-check        writes retried with their Idempotency-Key: {s['retries']} "
      f"({s['replayed']} answered by a replay), orders written twice: {s['duplicates']}")
counted = sum(n for kind, n in s["failures"].items() if not kind.endswith(" " + sys.argv[3]))
sys.exit(1 if counted or s["duplicates"] or not s["requests"] else 0)
PY
}
revision_of() { # revision_of SERVICE: the revision label of each of its running containers
  "${COMPOSE[@]}" ps -q "$1" | xargs docker inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}'
}

log "first deploy: build and start the stack"
REVISION=deploy-check-1 scripts/deploy.sh >"$WORK/deploy-1.log" 2>&1 ||
  { cat "$WORK/deploy-1.log" >&2; fail "the first deploy failed"; }
images+=("$(docker image inspect -f '{{.Id}}' "$IMAGE")")
# The load's credential (every /api/v1 route needs one), made before any load starts;
# the database, so the key, outlives both phases. Its orders are its own to count.
LOAD_API_KEY=$(make_api_key api-a deploy-load items:read items:write orders:read orders:write \
  -- "${COMPOSE[@]}") || fail "could not make the load's API key"
export LOAD_API_KEY

start_load deploy --clients 8 --rate 80 --writes 0.1
sleep 5
log "deploying a new build under load (8 clients, 80 requests/s, 10 % writes)"
deploy_started=$SECONDS
REVISION=deploy-check-2 scripts/deploy.sh 2>&1 | sed 's/^/    /' || fail "the deploy failed"
deploy_seconds=$((SECONDS - deploy_started))
images+=("$(docker image inspect -f '{{.Id}}' "$IMAGE")")
sleep 3
stop_load deploy
log "deploy took ${deploy_seconds} s"
for service in api-a api-b; do
  revisions=$(revision_of "$service")
  [ "$revisions" = deploy-check-2 ] || fail "$service runs revision(s) '$revisions', not deploy-check-2"
done
log "api-a and api-b each run one container of the new build"

start_load kill --clients 8 --rate 80 --writes 0.2
sleep 3
api=$("${COMPOSE[@]}" ps -q api-a)
# A worker is a child of the Gunicorn master, itself the child of tini (PID 1).
worker=$(docker exec "$api" python -c '
import os, pathlib, signal
def parent(pid): return int(pathlib.Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[1])
pids = [int(p.name) for p in pathlib.Path("/proc").iterdir() if p.name.isdigit()]
master = next(p for p in pids if parent(p) == 1)
worker = next(p for p in pids if parent(p) == master)
os.kill(worker, signal.SIGKILL)
print(worker)') || fail "could not kill a worker"
log "killed worker $worker of api-a with SIGKILL under load (8 clients, 80 requests/s, 20 % writes)"
sleep 5
# A response the killed worker had begun to send cannot be resent by anyone: the
# client sees it cut short (IncompleteRead); a write is retried with its key, a read
# cut short is tolerated. Every other request must succeed.
stop_load kill IncompleteRead

[ ${#failed[@]} -eq 0 ] || fail "requests failed in: ${failed[*]}"
log "passed in $SECONDS s"
