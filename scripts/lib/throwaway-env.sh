# shellcheck shell=bash
# Sourced, from the checkout's root, by the scripts that start docker-compose.prod.yml
# as a throw-away project (e2e.sh, fuzz.sh, restore-check.sh, ...): what they share.

SERVICE_NAME=${SERVICE_NAME:-$(sed -n 's/^name = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)} # pyproject.toml: the one place

# log MESSAGE: "<script> [ 12s] MESSAGE", the seconds since the script began.
log() { printf '%s [%3ds] %s\n' "$(basename "$0" .sh)" "$SECONDS" "$*"; }

random_secret() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# write_throwaway_env FILE HTTP_PORT HTTPS_PORT SUBNET PROXY_IP IMAGE [SETTING=value ...]:
# fresh random database and Redis passwords, plain HTTP on localhost, the proxy on a subnet of
# its own (apart from a real deployment's and from the other scripts'), and any extra
# app settings given.
write_throwaway_env() {
  local file=$1 http_port=$2 https_port=$3 subnet=$4 proxy_ip=$5 image=$6
  shift 6
  {
    echo "DOMAIN=http://localhost"
    echo "POSTGRES_PASSWORD=$(random_secret)"
    echo "APP_DB_PASSWORD=$(random_secret)"
    echo "REDIS_PASSWORD=$(random_secret)"
    echo "HTTP_PORT=$http_port"
    echo "HTTPS_PORT=$https_port"
    echo "EDGE_SUBNET=$subnet"
    echo "PROXY_IP=$proxy_ip"
    echo "API_IMAGE=$image"
    printf '%s\n' "$@"
  } >"$file"
}

# remove_stack COMPOSE_COMMAND...: the throw-away project's containers, networks and
# volumes. Each script runs it when it ends, and once before it starts: a run killed
# before its own cleanup (SIGKILL, a closed session) leaves its database volume behind,
# initialised with that run's passwords, and the next run's migrate could not log in.
remove_stack() {
  "$@" down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1 || true
}

# make_api_key NAME SCOPES... -- COMPOSE_COMMAND...: an API key for the scripts' own
# requests (every /api/v1 route needs one; docs/auth.md), made the way an operator would:
# in a one-off of the migrate service, the owner's role (the api's may not write keys).
# Printed (once) on stdout.
make_api_key() {
  local name=$1
  shift
  local scopes=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do scopes+=("$1"); shift; done
  shift
  "$@" run --rm --no-deps -T migrate python -m app.core.auth.keys create "$name" "${scopes[@]}"
}

# needs_examples WHAT: stop unless the example resources are here. The load and restore
# checks drive their routes; a fork made with `make init examples=no` points them at its
# own first (docs/development.md).
needs_examples() {
  [ -d app/items ] && [ -d app/orders ] || {
    echo "$1 drives the example resources (app/items, app/orders), which this service does not have (make init examples=no): point it at your own routes first" >&2
    exit 2
  }
}
