#!/usr/bin/env bash
# End-to-end checks of the production stack (`make e2e`): build the image, start
# docker-compose.prod.yml with throw-away secrets as a project of its own, and
# check it from the outside, through the proxy: the items API, the proxy's headers
# and body limit, the Postgres roles (the api's cannot CREATE TABLE), the hardening,
# Redis down, Redis paused across an api restart (no stale read after), one api down,
# a graceful SIGTERM. Removes everything it made, volumes
# included. On failure it prints the failing service's logs. Zero-downtime deploys:
# `make deploy-check`.
#
# What needs the example resources sits between `# only:examples` and
# `# /only:examples` lines (or on a line ending in `# only:examples`):
# `make init examples=no` deletes it, and the checks of the core remain.
#
# Needs Docker with Compose v2, curl, and free ports E2E_HTTP_PORT/E2E_HTTPS_PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/throwaway-env.sh
. scripts/lib/throwaway-env.sh

export COMPOSE_PROJECT_NAME=${E2E_PROJECT:-$SERVICE_NAME-e2e}
HTTP_PORT=${E2E_HTTP_PORT:-18080}
BASE="http://localhost:${HTTP_PORT}"
WORK=$(mktemp -d)
# One file for Compose's variables and the app's settings (the api's env_file).
export ENV_FILE="$WORK/env"
COMPOSE=(docker compose -f docker-compose.prod.yml --env-file "$ENV_FILE")

fail() { # fail MESSAGE [SERVICE]: "api" means both api services
  local service=${2:-} services
  [ "$service" != api ] || service="api-a api-b"
  read -ra services <<<"$service"
  printf '\ne2e FAILED: %s\n' "$1" >&2
  "${COMPOSE[@]}" ps -a >&2 || true
  if [ -n "$service" ]; then
    printf '\n--- logs of %s ---\n' "$service" >&2
    "${COMPOSE[@]}" logs --no-color --tail=200 "${services[@]}" >&2 || true
  else
    "${COMPOSE[@]}" logs --no-color --tail=60 >&2 || true
  fi
  exit 1
}
cleanup() {
  remove_stack "${COMPOSE[@]}"
  rm -rf "$WORK"
}
trap cleanup EXIT

write_throwaway_env "$ENV_FILE" "$HTTP_PORT" "${E2E_HTTPS_PORT:-18443}" \
  "${E2E_SUBNET:-172.30.251.0/24}" "${E2E_PROXY_IP:-172.30.251.10}" "$SERVICE_NAME:e2e"
remove_stack "${COMPOSE[@]}" # what a killed earlier run left

# request METHOD PATH [BODY]: sets STATUS, BODY, HEADERS (lower-cased names). Sends
# API_KEY, once the stack has made it; `API_KEY= request ...` sends no credential.
API_KEY=""
request() {
  local args=(-sS -X "$1" -o /dev/stdout -D "$WORK/headers" -w '\n%{http_code}' --max-time 20)
  # curl reads no body after HEAD only when told so (--head): none may come.
  [ "$1" != HEAD ] || args=(-sS --head -o /dev/null -D "$WORK/headers" -w '\n%{http_code}' --max-time 20)
  [ -z "$API_KEY" ] || args+=(-H "X-API-Key: $API_KEY")
  [ $# -ge 3 ] && args+=(-H 'content-type: application/json' --data "$3")
  local out
  out=$(curl "${args[@]}" "$BASE$2") || fail "curl $1 $2 could not connect" proxy
  STATUS=${out##*$'\n'}
  BODY=${out%$'\n'*}
  HEADERS=$(tr -d '\r' <"$WORK/headers" | tr '[:upper:]' '[:lower:]')
}
expect() { # expect STATUS "what" METHOD PATH [BODY]: request, and fail unless it answered STATUS
  request "${@:3}"
  [ "$STATUS" = "$1" ] || fail "$2: expected $1, got $STATUS: $BODY" api
}
contains() { # contains "needle" "what"
  [[ "$BODY" == *"$1"* ]] || fail "$2: body lacks $1: $BODY" api
}
json_field() { # json_field NAME: a top-level string field of BODY
  sed -nE "s/.*\"$1\":\"([^\"]*)\".*/\1/p" <<<"$BODY"
}
wait_healthy() { # wait_healthy SERVICE SECONDS
  local deadline=$((SECONDS + $2))
  until [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${COMPOSE[@]}" ps -q "$1")")" = healthy ]; do
    [ $SECONDS -lt $deadline ] || fail "$1 not healthy after $2 s" "$1"
    sleep 0.2
  done
}

log "building the image"
head_revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
"${COMPOSE[@]}" build --build-arg REVISION="$head_revision" migrate >/dev/null || fail "image build failed"

image=$SERVICE_NAME:e2e
revision=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' "$image")
[ "$revision" = "$head_revision" ] || fail "revision label is '$revision'"
docker run --rm --entrypoint sh "$image" -c '
  for path in /app/tests /app/.git /app/.env /app/uv.lock; do
    [ ! -e "$path" ] || { echo "image contains $path"; exit 1; }
  done
  for tool in uv gcc cc; do
    ! command -v "$tool" >/dev/null || { echo "image contains $tool"; exit 1; }
  done' || fail "the runtime image holds more than the app"
log "image: app code only (no tests, .git, .env, uv or compiler), revision label $revision"

log "starting the stack"
"${COMPOSE[@]}" up --detach --wait --wait-timeout 120 >/dev/null 2>&1 || fail "stack did not become healthy"

migrate=$("${COMPOSE[@]}" ps -aq migrate)
migrate_exit=$(docker inspect -f '{{.State.ExitCode}}' "$migrate")
[ "$migrate_exit" = 0 ] || fail "migrate exited with $migrate_exit" migrate
# Its lines in the app's JSON, as every service's: none may be plain text. (docker logs:
# Compose's own adds terminal codes to each line.)
migrate_logs=$(docker logs "$migrate" 2>&1)
grep -q '"event"' <<<"$migrate_logs" || fail "migrate logged no JSON line" migrate
plain=$(grep -v '^{' <<<"$migrate_logs" || true)
[ -z "$plain" ] || fail "migrate logged plain text: $(head -c 300 <<<"$plain")" migrate
log "migrate exited 0, its lines JSON"

# Every /api/v1 route needs a credential; the production stack has no identity
# provider, so the checks use an API key, made the way an operator would.
scopes=()
scopes=(items:read items:write orders:read orders:write) # only:examples
API_KEY=$(make_api_key e2e "${scopes[@]}" -- "${COMPOSE[@]}") || fail "could not make an API key" db

expect 200 "liveness" GET /health
contains '"status":"pass"' "liveness"
expect 200 "readiness" GET /health/ready
contains '"status":"pass"' "readiness"
expect 200 "HEAD as GET" HEAD /health
[ -z "$BODY" ] || fail "HEAD /health sent a body: $BODY" api
[[ "$HEADERS" == *"content-length: "[1-9]* ]] || fail "HEAD /health lacks GET's Content-Length" api
expect 200 "the schema" GET /openapi.json
[[ "$HEADERS" == *"cache-control: no-store"* ]] || fail "a response without Cache-Control: no-store" api
log "health and readiness pass through the proxy; HEAD answers as GET; responses are no-store"

# only:examples
expect 201 "create item" POST /api/v1/items '{"name":"e2e","description":"through the proxy"}'
item_id=$(json_field id)
location=$(sed -nE 's/^location: (.*)$/\1/p' <<<"$HEADERS")
[ "$location" = "$BASE/api/v1/items/$item_id" ] || fail "Location is '$location'" api
expect 200 "get item" GET "/api/v1/items/$item_id"
expect 200 "patch item" PATCH "/api/v1/items/$item_id" '{"description":"patched"}'
contains '"description":"patched"' "patch item"
expect 200 "list items" GET "/api/v1/items?limit=10"
contains "\"id\":\"$item_id\"" "list items"
expect 409 "duplicate name" POST /api/v1/items '{"name":"e2e"}'
[[ "$HEADERS" == *"content-type: application/problem+json"* ]] || fail "409 is not problem+json" api
expect 204 "delete item" DELETE "/api/v1/items/$item_id"
expect 404 "deleted item" GET "/api/v1/items/$item_id"
log "items API works through the proxy"

# Background jobs: an order is answered at once, and the worker confirms it after.
expect 201 "create the ordered item" POST /api/v1/items '{"name":"e2e-ordered"}'
expect 201 "create order" POST /api/v1/orders "{\"item_id\":\"$(json_field id)\",\"quantity\":1}"
order_id=$(sed -nE 's/^\{"id":"([^"]*)".*/\1/p' <<<"$BODY") # its own id: the item's comes later
ordered_at=$SECONDS
until request GET "/api/v1/orders/$order_id" && [ -n "$(json_field confirmed_at)" ]; do
  if [ $((SECONDS - ordered_at)) -ge 30 ]; then
    "${COMPOSE[@]}" exec -T db psql -X -U postgres -d app -c \
      "SELECT id, status, attempts, entrypoint FROM pgqueuer" -c \
      "SELECT job_id, status, traceback FROM pgqueuer_log ORDER BY id" >&2 || true
    fail "the worker did not confirm the order within 30 s (the queue and its log above)" worker
  fi
  sleep 0.2
done
log "jobs: the worker confirmed the order $((SECONDS - ordered_at)) s after it was placed"
# /only:examples
# The worker's own metrics (JOBS_METRICS_PORT, never published): its queue gauges, and
# the order's job run counted.
worker_metrics=$("${COMPOSE[@]}" exec -T worker python -c \
  'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9000/metrics", timeout=5).read().decode())') ||
  fail "the worker serves no metrics on 9000" worker
grep -q '^# TYPE jobs_oldest_waiting_seconds gauge' <<<"$worker_metrics" ||
  fail "the worker's metrics lack the queue gauges" worker
# only:examples
grep -qE '^job_duration_seconds_count\{job_name="confirm_order",outcome="success"\} [1-9]' <<<"$worker_metrics" ||
  fail "the worker's metrics count no confirm_order run: $(grep '^job' <<<"$worker_metrics")" worker
grep -q '^jobs_oldest_waiting_seconds{job_name="confirm_order"}' <<<"$worker_metrics" ||
  fail "the worker's metrics sample no confirm_order queue" worker
# /only:examples
log "jobs: the worker's metrics sample the queue and count the runs"

# only:examples
# Without a credential, reads and writes alike are refused at the api, and the 401
# reaches the client through the proxy as RFC 6750 asks: WWW-Authenticate, problem+json.
unauthenticated() { # unauthenticated METHOD [BODY]
  API_KEY="" expect 401 "$1 /api/v1/items without a credential" "$1" /api/v1/items "${@:2}"
  [[ "$HEADERS" == *"www-authenticate: bearer"* ]] || fail "$1's 401 lacks WWW-Authenticate: Bearer: $HEADERS" api
  [[ "$HEADERS" == *"content-type: application/problem+json"* ]] || fail "$1's 401 is not problem+json" api
}
unauthenticated GET
unauthenticated POST '{"name":"e2e-anonymous"}'
log "no credential: GET and POST /api/v1/items answer 401, WWW-Authenticate: Bearer, problem+json"
# /only:examples

# Proxy: a method nothing serves is a 501 in problem+json, not the api server's plain 400.
expect 501 "an unknown method" FOO /health
[[ "$HEADERS" == *"content-type: application/problem+json"* ]] || fail "the 501 is not problem+json: $BODY" proxy
# Two request ids, the first well-formed and the second not: the proxy's own error body
# (and the id the api would log) must get its UUID, not the second id spliced into JSON.
BODY=$(curl -sS -X FOO -D "$WORK/headers" --max-time 20 -H 'X-Request-ID: ok-1' \
  -H 'X-Request-ID: x","status":200,"title":"x' "$BASE/health") || fail "curl FOO /health" proxy
HEADERS=$(tr -d '\r' <"$WORK/headers" | tr '[:upper:]' '[:lower:]')
request_id=$(json_field request_id)
[[ "$BODY" == *'"status":501'* && "$BODY" != *'"status":200'* && "$request_id" =~ ^[0-9a-f-]{36}$ ]] ||
  fail "two X-Request-ID headers reached the proxy's error body: $BODY" proxy
[[ "$HEADERS" == *"x-content-type-options: nosniff"* && "$HEADERS" != *"server: caddy"* ]] ||
  fail "the proxy's own error lacks the security headers: $HEADERS" proxy
# Security headers, no HSTS over plain HTTP, bodies above MAX_BODY_SIZE refused.
request GET /health
[[ "$HEADERS" == *"x-content-type-options: nosniff"* ]] || fail "no X-Content-Type-Options" proxy
[[ "$HEADERS" != *"strict-transport-security"* ]] || fail "HSTS sent over plain HTTP" proxy
printf '{"name":"big","description":"%s"}' "$(head -c 1100000 /dev/zero | tr '\0' x)" >"$WORK/big.json"
post_big() { # post_big [CURL_OPTION...]: POST /api/v1/items that 1.1 MB body
  curl -sS --max-time 20 "$@" -H "X-API-Key: $API_KEY" -H 'content-type: application/json' \
    --data-binary "@$WORK/big.json" "$BASE/api/v1/items"
}
# A chunked body has no size to refuse it by: the proxy streams it, and the api's route
# refuses it as it reads (an api without a POST route has nothing that reads it).
encodings=(content-length)
encodings+=(chunked) # only:examples
for encoding in "${encodings[@]}"; do
  extra=()
  [ "$encoding" = content-length ] || extra=(-H 'Transfer-Encoding: chunked')
  status=$(post_big -o /dev/null -w '%{http_code}' "${extra[@]}")
  [ "$status" = 413 ] || fail "1.1 MB body ($encoding): expected 413, got $status" proxy
done
# The proxy's own 413 carries a request id, in its header and in its body, like the api's errors.
refused=$(post_big -D - | tr -d '\r')
rid=$(sed -nE 's/^[Xx]-[Rr]equest-[Ii][Dd]: (.+)$/\1/p' <<<"$refused")
[ -n "$rid" ] && [[ "$refused" == *"\"request_id\":\"$rid\""* ]] ||
  fail "the proxy's 413 lacks a request id in its header and body: $refused" proxy
expect 200 "a request after the refused bodies" GET /openapi.json
# Every request above sent the API key through the proxy: its access log must not hold it.
proxy_log=$("${COMPOSE[@]}" logs --no-color proxy)
if [[ "$proxy_log" == *'"X-Api-Key"'* || "$proxy_log" == *"$API_KEY"* ]]; then
  fail "the proxy's access log holds the X-API-Key header" proxy
fi
log "proxy: an unknown method 501 (its own errors with the security headers, one request id), nosniff, no HSTS over HTTP, 1.1 MB bodies refused with 413 (${encodings[*]}), with a request id, no API key logged"

# Request ids from the edge: the proxy gives a request without one its UUID, which the
# api keeps and logs; a well-formed id the client sends is kept as it is.
rid=$(sed -nE 's/^x-request-id: (.+)$/\1/p' <<<"$HEADERS")
[[ "$rid" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$ ]] ||
  fail "expected the proxy's UUID as the request id, got '$rid'" proxy
logged_by_api() { # not `logs | grep -q`: grep's early exit would fail the pipeline (pipefail)
  [[ "$("${COMPOSE[@]}" logs --no-color api-a api-b)" == *"\"request_id\":\"$1\""* ]]
}
for _ in $(seq 20); do # the log lines reach `docker compose logs` within moments
  if logged_by_api "$rid"; then break; fi
  sleep 0.25
done
logged_by_api "$rid" || fail "the api logged no line with the proxy's request id $rid" api
sent=$(curl -sS -o /dev/null -D - --max-time 20 -H 'X-Request-ID: e2e-trace-1' "$BASE/health" | tr -d '\r')
grep -qix 'x-request-id: e2e-trace-1' <<<"$sent" || fail "the client's request id was not kept: $sent" proxy
log "request ids: the proxy's UUID reaches the api's log lines; a client's own id is kept"

# Postgres: the api's role reads and writes the tables and nothing else; the owner
# role ran the migrations; the api holds neither role's password but its own URL.
psql_as() { "${COMPOSE[@]}" exec -T db psql -X -q -t -A -v ON_ERROR_STOP=1 -U "$1" -d app -c "$2" 2>&1; }
# idempotency_keys: a table of core's, which every service has.
[ "$(psql_as app 'SELECT count(*) >= 0 FROM idempotency_keys')" = t ] || fail "app role cannot read a table" db
# Refused: DDL, and the writes only the owner makes (an API key: docs/auth.md; the revision).
for statement in "CREATE TABLE e2e_probe (id int)" "CREATE TEMP TABLE e2e_probe (id int)" \
  "CREATE ROLE e2e_probe" "ALTER TABLE idempotency_keys ADD COLUMN e2e_probe int" \
  "DROP TABLE idempotency_keys" \
  "INSERT INTO api_keys (id, name, secret_sha256, scopes) VALUES ('0000e2e0probe000', 'e2e-probe', '\\x00', '{}')" \
  "UPDATE api_keys SET revoked_at = now()" "UPDATE alembic_version SET version_num = 'e2e_probe'"; do
  if out=$(psql_as app "$statement"); then fail "app role could run: $statement" db; fi
  [[ "$out" == *"permission denied"* || "$out" == *"must be owner"* ]] ||
    fail "app role: '$statement' failed for another reason: $out" db
done
[ "$(psql_as postgres "SELECT rolsuper FROM pg_roles WHERE rolname = 'app'")" = f ] ||
  fail "app role is a superuser" db
owners=$(psql_as postgres "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
[ "$owners" = app_owner ] || fail "the tables are owned by $owners, not app_owner alone" db
db_password=$(sed -nE 's/^POSTGRES_PASSWORD=(.*)$/\1/p' "$ENV_FILE")
if docker exec "$("${COMPOSE[@]}" ps -q api-a)" env | grep -qF "$db_password"; then
  fail "the api's environment holds the owner's password" api
fi
log "postgres: app role cannot CREATE TABLE (nor TEMP, ROLE, ALTER, DROP), write API keys nor the revision; tables owned by app_owner"

# Redis: a client without the password is refused; the api holds it only inside REDIS_URL.
noauth=$("${COMPOSE[@]}" exec -T redis env -u REDISCLI_AUTH redis-cli ping 2>&1) || true
[[ "$noauth" == NOAUTH* ]] || fail "redis answered a client without its password: $noauth" redis
[ -z "$(docker exec "$("${COMPOSE[@]}" ps -q api-a)" printenv REDIS_PASSWORD)" ] ||
  fail "the api's environment holds REDIS_PASSWORD" api
log "redis: a client without the password gets NOAUTH"

api=$("${COMPOSE[@]}" ps -q api-a)
[ "$(docker exec "$api" id -u)" = 10001 ] || fail "api runs as uid $(docker exec "$api" id -u)" api
[ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$api")" = true ] || fail "api root filesystem is writable" api
if docker exec "$api" sh -c 'touch /app/written 2>/dev/null || touch /written 2>/dev/null'; then
  fail "api could write to its root filesystem" api
fi
# As root, so that no directory is hidden from the search.
escalators=$(docker exec -u 0 "$api" find / -xdev -perm /6000 -type f 2>/dev/null) || true
[ -z "$escalators" ] || fail "the api image has setuid or setgid programs: $escalators" api
if docker exec "$api" python -c 'import pip' 2>/dev/null; then fail "the api image has pip" api; fi
log "api runs as uid 10001 on a read-only root filesystem, with no setuid or setgid program, no pip"

# Only the proxy is trusted for X-Forwarded-*: the api logs the real client, not the proxy.
proxy_ip=$(sed -nE 's/^PROXY_IP=(.*)$/\1/p' "$ENV_FILE")
clients=$("${COMPOSE[@]}" logs --no-color api-a api-b | { grep -E '"path": ?"/openapi.json"' || true; } |
  sed -nE 's/.*"client": ?"([^"]*)".*/\1/p' | sort -u)
[ -n "$clients" ] || fail "no access log line with a client address" api
[[ "$clients" != *"$proxy_ip"* ]] || fail "api logged the proxy ($proxy_ip) as the client" api
log "forwarded client address applied (client: $(head -1 <<<"$clients"), proxy: $proxy_ip)"

"${COMPOSE[@]}" stop redis >/dev/null 2>&1
expect 200 "readiness without redis" GET /health/ready
contains '"status":"warn"' "readiness without redis"
expect 201 "create item without redis" POST /api/v1/items '{"name":"no-redis"}' # only:examples
expect 200 "get item without redis" GET "/api/v1/items/$(json_field id)" # only:examples
"${COMPOSE[@]}" start redis >/dev/null 2>&1
wait_healthy redis 30
request GET /health/ready
contains '"status":"pass"' "readiness after redis is back"
log "redis down: readiness warns, the api still serves; back: pass"

# A paused Redis keeps its data. An item changed while it is paused, then both apis
# restarted before it answers again: the change's cache delete waited in Postgres, so
# once Redis is back (and each worker's breaker lets calls through) no read gets the
# old entry.
# only:examples
expect 201 "create an item to change while redis is paused" POST /api/v1/items '{"name":"before-pause"}'
paused_item=$(json_field id)
expect 200 "read it (cached)" GET "/api/v1/items/$paused_item"
"${COMPOSE[@]}" pause redis >/dev/null 2>&1
expect 200 "change it while redis is paused" PATCH "/api/v1/items/$paused_item" '{"name":"after-pause"}'
"${COMPOSE[@]}" restart api-a api-b >/dev/null 2>&1
wait_healthy api-a 60
wait_healthy api-b 60
"${COMPOSE[@]}" unpause redis >/dev/null 2>&1
sleep 2.5 # past REDIS_BREAKER_COOLDOWN: a worker that saw the pause asks Redis again
for _ in 1 2 3 4 5 6; do
  expect 200 "read it once redis answers" GET "/api/v1/items/$paused_item"
  contains '"name":"after-pause"' "a change made while redis was paused, apis restarted"
done
wait_healthy redis 30 # its healthcheck failed during the pause; the apis depend on it
log "a change made while redis was paused, apis restarted before it answered: never read stale"
# /only:examples

# One api down, the other serves: the proxy's health checks and retries route around it.
"${COMPOSE[@]}" stop api-a >/dev/null 2>&1
for _ in 1 2 3 4 5; do
  expect 200 "a request with api-a stopped" GET /openapi.json
done
"${COMPOSE[@]}" start api-a >/dev/null 2>&1
wait_healthy api-a 30
log "api-a stopped: api-b served every request"

# Graceful shutdown: both apis exit 0 on SIGTERM, with a slow upload in flight.
# only:examples
payload=$(printf '{"name":"in-flight","description":"%s"}' "$(head -c 6000 /dev/zero | tr '\0' x)")
curl -sS -o /dev/null -w '%{http_code}' --max-time 60 --limit-rate 1500 -H "X-API-Key: $API_KEY" \
  -H 'content-type: application/json' --data "$payload" "$BASE/api/v1/items" >"$WORK/inflight" &
upload=$!
sleep 1.5
kill -0 "$upload" 2>/dev/null || fail "the slow upload finished before the shutdown began" api
# /only:examples
stop_started=$SECONDS
"${COMPOSE[@]}" stop api-a api-b >/dev/null 2>&1
# only:examples
wait "$upload" || true
inflight=$(cat "$WORK/inflight")
[ "$inflight" = 201 ] || fail "in-flight request got '$inflight' during shutdown" api
log "SIGTERM: the in-flight request completed (201)"
# /only:examples
for service in api-a api-b; do
  api_exit=$(docker inspect -f '{{.State.ExitCode}}' "$("${COMPOSE[@]}" ps -aq "$service")")
  [ "$api_exit" = 0 ] || fail "$service exited with $api_exit after SIGTERM" "$service"
done
log "SIGTERM: api-a and api-b exited 0 in $((SECONDS - stop_started)) s"

start_ns=$(date +%s%N)
"${COMPOSE[@]}" start api-a api-b >/dev/null 2>&1
wait_healthy api-a 30
wait_healthy api-b 30
log "api-a and api-b start to healthy: $(( ($(date +%s%N) - start_ns) / 1000000 )) ms"
expect 200 "a request after the restart" GET /openapi.json

log "passed in $SECONDS s"
