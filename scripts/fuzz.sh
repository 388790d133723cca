#!/usr/bin/env bash
# Fuzz the API against its own OpenAPI document (`make fuzz`): build the image,
# start docker-compose.prod.yml with throw-away secrets as a project of its own,
# and run Schemathesis (every check, stateful phase on) through the proxy, as an
# outside client would, with an API key made for the run. First, every /api/v1
# operation of the schema is sent without a credential and must answer 401 with
# `WWW-Authenticate: Bearer`. Fails on any finding, and when an api container stopped,
# restarted or was OOM-killed during the run. Removes everything it made, volumes included.
#
# Needs Docker with Compose v2, curl, python3, and free ports FUZZ_HTTP_PORT/FUZZ_HTTPS_PORT.
# The FUZZ_* knobs below are described, with their defaults, in docs/fuzz.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/throwaway-env.sh
. scripts/lib/throwaway-env.sh

export COMPOSE_PROJECT_NAME=${FUZZ_PROJECT:-fsfuzz}
HTTP_PORT=${FUZZ_HTTP_PORT:-18280}
BASE="http://localhost:${HTTP_PORT}"
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-200}
SEED=${FUZZ_SEED:-20261124}
REPORT_DIR=${FUZZ_REPORT_DIR:-fuzz/report}
TIMEOUT=${FUZZ_TIMEOUT:-600}
API_IMAGE=$SERVICE_NAME:fuzz
FUZZER_IMAGE=$SERVICE_NAME-fuzzer:local
FUZZER_CONTAINER="$COMPOSE_PROJECT_NAME-schemathesis"
# The compose file reads the app's settings from $ENV_FILE (its `env_file:`).
export ENV_FILE
ENV_FILE=$(mktemp)
COMPOSE=(docker compose -f docker-compose.prod.yml --env-file "$ENV_FILE")

fail() { # fail "why" [--logs]: with --logs, the stack's state and recent logs too
  printf '\nfuzz FAILED: %s\n' "$1" >&2
  if [ "${2:-}" = --logs ]; then
    "${COMPOSE[@]}" ps -a >&2 || true
    "${COMPOSE[@]}" logs --no-color --tail=60 >&2 || true
  fi
  exit 1
}
cleanup() {
  docker rm --force "$FUZZER_CONTAINER" >/dev/null 2>&1 || true
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    log "FUZZ_KEEP=1: the stack is still up at $BASE (project $COMPOSE_PROJECT_NAME)."
    log "remove it with: docker compose -p $COMPOSE_PROJECT_NAME down --volumes"
  else
    remove_stack "${COMPOSE[@]}"
  fi
  rm -f "$ENV_FILE"
}
trap cleanup EXIT

# Both rate limits off: the fuzzer sends thousands of writes from one address, and the
# unauthenticated pass below and Schemathesis' ignored_auth check fail to authenticate
# on purpose, far more than 20 times a minute.
write_throwaway_env "$ENV_FILE" "$HTTP_PORT" "${FUZZ_HTTPS_PORT:-18643}" \
  "${FUZZ_SUBNET:-172.30.253.0/24}" "${FUZZ_PROXY_IP:-172.30.253.10}" "$API_IMAGE" \
  RATE_LIMIT_WRITES=0 RATE_LIMIT_AUTH_FAILURES=0
remove_stack "${COMPOSE[@]}" # what a killed earlier run left

log "building the api image and the fuzzer"
docker build --quiet --tag "$API_IMAGE" . >/dev/null || fail "api image build failed"
docker build --quiet --tag "$FUZZER_IMAGE" fuzz >/dev/null || fail "fuzzer image build failed"

log "starting the stack"
"${COMPOSE[@]}" up --detach --wait --wait-timeout 120 >/dev/null 2>&1 ||
  fail "stack did not become healthy" --logs

# The api's containers, however many services the compose file runs its image as.
mapfile -t apis < <(docker ps --quiet --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
  --filter "ancestor=$API_IMAGE")
[ "${#apis[@]}" -gt 0 ] || fail "no running api container" --logs

# The run is only meaningful with the limits off: otherwise writes turn into 429s.
for api in "${apis[@]}"; do
  for setting in RATE_LIMIT_WRITES=0 RATE_LIMIT_AUTH_FAILURES=0; do
    docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$api" | grep -qx "$setting" ||
      fail "the api did not get $setting from the env file"
  done
done

# Production serves no /docs, but it does serve the schema the fuzzer reads. The
# proxy answers 503 until its own health checks have seen an api ready: wait for that.
deadline=$((SECONDS + 60))
until status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$BASE/openapi.json") &&
  [ "$status" = 200 ]; do
  [ $SECONDS -lt $deadline ] || fail "GET /openapi.json through the proxy: ${status:-no answer}, not 200" --logs
  sleep 0.5
done

# Every /api/v1 operation the schema lists, without a credential: 401 problem+json with
# `WWW-Authenticate: Bearer` (docs/auth.md), whatever the operation. A route that
# forgot its `requires` would still need an identity; one served outside the
# authenticated routers would answer something else here.
log "every /api/v1 operation without a credential: 401 expected"
curl -sS --max-time 10 "$BASE/openapi.json" | python3 -c '
import json, re, sys, urllib.error, urllib.request
base, failures, count = sys.argv[1], [], 0
for path, operations in json.load(sys.stdin)["paths"].items():
    if not path.startswith("/api/v1"):
        continue
    url = base + re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)
    for method in operations.keys() & {"get", "put", "post", "patch", "delete"}:
        count += 1
        body = b"{}" if method in ("put", "post", "patch") else None
        request = urllib.request.Request(url, method=method.upper(), data=body)
        request.add_header("Content-Type", "application/json")
        try:
            urllib.request.urlopen(request, timeout=10)
            status, headers = 200, {}
        except urllib.error.HTTPError as error:
            status, headers = error.code, error.headers
        challenge = headers.get("WWW-Authenticate", "")
        kind = headers.get("Content-Type", "")
        if status != 401 or not challenge.startswith("Bearer") or not kind.startswith("application/problem+json"):
            failures.append(f"{method.upper()} {path}: {status}, WWW-Authenticate {challenge!r}, {kind}")
print("\n".join(failures) or f"{count} operations, each 401 with WWW-Authenticate: Bearer")
sys.exit(1 if failures or not count else 0)
' "$BASE" || fail "an /api/v1 operation answered without a credential, or not with 401"

# The fuzzer's key holds every scope an operation of the schema asks for: without its
# scope, an operation answers every case 403, which passes and proves nothing.
read -ra scopes < <(curl -sS --max-time 10 "$BASE/openapi.json" | python3 -c '
import json, sys
operations = [op for item in json.load(sys.stdin)["paths"].values() for op in item.values()]
print(" ".join(sorted({
    scope
    for operation in operations if isinstance(operation, dict)
    for requirement in operation.get("security", [])
    for scopes in requirement.values()
    for scope in scopes
})))')
[ ${#scopes[@]} -gt 0 ] || fail "no scopes in the schema's security requirements" --logs
log "making the fuzzer's API key: ${scopes[*]}"
api_key=$(make_api_key "fuzz" "${scopes[@]}" -- "${COMPOSE[@]}") &&
  [ -n "$api_key" ] || fail "could not make an API key" --logs

mkdir -p "$REPORT_DIR"
report_path=$(cd "$REPORT_DIR" && pwd)  # absolute, whether FUZZ_REPORT_DIR was or not
(cd "$REPORT_DIR" && rm -rf junit-*.xml vcr-*.yaml .schemathesis .hypothesis)
log "schemathesis: all checks, phases examples,coverage,fuzzing,stateful," \
  "$MAX_EXAMPLES examples per operation, seed $SEED"
# On the host's network, to reach the proxy's published port as any client would. Only
# the key, no credential of Schemathesis' making: the schema lists both schemes, and the
# API refuses a request with two (401). Bounded: a stack that answers slowly (every
# request a 503 after the proxy's retry window) would stretch the run to many minutes.
fuzz_status=0
timeout "$TIMEOUT" docker run --rm --name "$FUZZER_CONTAINER" --network host --user "$(id -u):$(id -g)" \
  --volume "$report_path:/report" --workdir /report \
  --volume "$PWD/fuzz/schemathesis.toml:/config/schemathesis.toml:ro" \
  "$FUZZER_IMAGE" --config-file /config/schemathesis.toml run "$BASE/openapi.json" \
  --header "X-API-Key: $api_key" \
  --generation-with-security-parameters false \
  --checks all \
  --phases examples,coverage,fuzzing,stateful \
  --max-examples "$MAX_EXAMPLES" \
  --continue-on-failure \
  --seed "$SEED" \
  --generation-database none \
  --workers 1 \
  --request-timeout 10 \
  --no-color \
  --report junit,vcr --report-dir . ||
  fuzz_status=$?

# What clients got, from the proxy's access log: the api's answers and the proxy's
# own (502/503 when no api could take the request).
codes=$("${COMPOSE[@]}" logs --no-color proxy | grep '"logger":"http.log.access' |
  sed -nE 's/.*"status":([0-9]+).*/\1/p' | sort | uniq -c | awk '{printf " %s×%s", $2, $1}')
log "status codes through the proxy:${codes:- none}"
for api in "${apis[@]}"; do
  state=$(docker inspect -f '{{.State.Status}} restarts={{.RestartCount}} oom={{.State.OOMKilled}}' "$api")
  [ "$state" = "running restarts=0 oom=false" ] || fail "an api container is '$state' after the run" --logs
done
[ "$fuzz_status" != 124 ] || fail "schemathesis did not finish within $TIMEOUT s (FUZZ_TIMEOUT)"
[ "$fuzz_status" = 0 ] || fail "schemathesis reported findings (exit $fuzz_status); report in $REPORT_DIR"
log "passed in $SECONDS s: no findings, api never restarted"
