#!/usr/bin/env bash
# `make check-clones`: two clones of this repository on one machine do not touch
# each other. Clones the committed HEAD twice into a temporary directory, runs
# `make init` and `make up` in each (init picks free host ports), then `make test`
# in both at the same time, and checks that:
#   - the two dev stacks and the two test stacks are four distinct Compose projects,
#     and no container, volume, network or image belongs to more than one of them;
#   - both test stacks really ran at the same time, and both passed;
#   - an item created in one clone's API is not seen by the other's, and survives
#     both test runs (the tests never touch a dev stack).
# Removes everything it created, on success or failure.
# Optional: CHECK_PREFIX (the clones' directory names, so their Compose projects),
# CHECK_API_PORT, CHECK_POSTGRES_PORT, CHECK_REDIS_PORT, CHECK_DEBUGPY_PORT
# (where `make init` starts looking for free ports), KEEP=1 (leave it all running).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# Nothing from a calling make or shell may leak into the clones' own settings.
init_env=(
  API_PORT="${CHECK_API_PORT:-8000}" POSTGRES_PORT="${CHECK_POSTGRES_PORT:-5432}"
  REDIS_PORT="${CHECK_REDIS_PORT:-6379}" DEBUGPY_PORT="${CHECK_DEBUGPY_PORT:-5678}"
)
unset PROJECT API_PORT POSTGRES_PORT REDIS_PORT DEBUGPY_PORT DEBUGPY MAKEFLAGS MAKELEVEL

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-clones.XXXXXX")
id=$(printf '%04x%04x' "$RANDOM" "$RANDOM")
clones=("$tmp/${CHECK_PREFIX:-clone}-$id-a" "$tmp/${CHECK_PREFIX:-clone}-$id-b")
started=$SECONDS
say() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
setting() { sed -n "s/^$2=//p" "$1/.env" | tail -n 1; }

cleanup() {
  status=$?
  if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: left in $tmp"; exit "$status"; fi
  say "cleanup"
  for dir in "${clones[@]}"; do
    [ -f "$dir/.env" ] || continue
    project=$(setting "$dir" PROJECT)
    make -C "$dir" --no-print-directory down v=1 >/dev/null 2>&1 || true
    docker compose -p "$project-test" -f "$dir/docker-compose.test.yml" down --volumes \
      --remove-orphans >/dev/null 2>&1 || true
    docker image rm "$project-dev" >/dev/null 2>&1 || true
  done
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so the cleanup runs on Ctrl-C and kill too

say "two clones of $(git rev-parse --short HEAD) in $tmp"
for dir in "${clones[@]}"; do
  git clone --quiet "$repo" "$dir"
done

# One after the other: `make init` takes ports that are free now, so the second
# clone's init must run once the first clone's stack holds its ports.
for dir in "${clones[@]}"; do
  say "make init && make up in $(basename "$dir")"
  env "${init_env[@]}" make -C "$dir" --no-print-directory init
  make -C "$dir" --no-print-directory up
done

a=${clones[0]} b=${clones[1]}
pa=$(setting "$a" PROJECT) pb=$(setting "$b" PROJECT)
url_a="http://localhost:$(setting "$a" API_PORT)" url_b="http://localhost:$(setting "$b" API_PORT)"
[ "$pa" != "$pb" ] || fail "both clones got the project name $pa"

api_a=$(docker compose -p "$pa" -f "$a/docker-compose.yml" ps -q api)
api_b=$(docker compose -p "$pb" -f "$b/docker-compose.yml" ps -q api)

say "nothing shared between the two dev stacks"
resources() {  # every container, volume and network of a project, and its dev image
  local project=$1
  docker ps -a --filter "label=com.docker.compose.project=$project" --format 'container {{.Names}}'
  docker volume ls --filter "label=com.docker.compose.project=$project" --format 'volume {{.Name}}'
  docker network ls --filter "label=com.docker.compose.project=$project" --format 'network {{.Name}}'
  docker compose -p "$project" -f "$a/docker-compose.yml" config --images 2>/dev/null |
    grep -- '-dev$' | sed 's/^/image /' || true
}
resources "$pa" | sort -u >"$tmp/a.txt"
resources "$pb" | sort -u >"$tmp/b.txt"
cat "$tmp/a.txt" "$tmp/b.txt"
shared=$(comm -12 "$tmp/a.txt" "$tmp/b.txt")
[ -z "$shared" ] || fail "shared between the clones: $shared"
grep -q '^volume ' "$tmp/a.txt" && grep -q '^volume ' "$tmp/b.txt" || fail "no database volume found"
# Each API container is attached to its own project's network only.
for pair in "$pa:$api_a" "$pb:$api_b"; do
  project=${pair%%:*} container=${pair#*:}
  networks=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "$container")
  [ "$networks" = "${project}_default " ] || fail "$project's api is on: $networks"
done

say "an item in $pa only"
# Every /api/v1 route needs a credential (docs/auth.md): an API key per clone, each
# made in its own database: $pb not seeing the item must mean its data, not a refused key.
key_a=$(make -C "$a" --no-print-directory -s api-key name=check-clones scopes="items:read items:write")
key_b=$(make -C "$b" --no-print-directory -s api-key name=check-clones scopes="items:read")
marker="only-in-$pa"
curl -fsS --retry 5 --retry-delay 2 --retry-all-errors -X POST "$url_a/api/v1/items" -H 'Content-Type: application/json' \
  -H "X-API-Key: $key_a" -d "{\"name\": \"$marker\"}" >/dev/null
has_item() { # has_item URL KEY; a refused request fails the check, not answers "no"
  local page
  page=$(curl -fsS -H "X-API-Key: $2" "$1/api/v1/items?limit=100") || fail "GET $1/api/v1/items failed"
  [[ "$page" == *"\"$marker\""* ]]
}
has_item "$url_a" "$key_a" || fail "$pa lost its item"
if has_item "$url_b" "$key_b"; then fail "$pb sees $pa's item"; fi

say "make test in both clones at the same time"
make -C "$a" --no-print-directory test >"$tmp/test-a.log" 2>&1 & test_a=$!
make -C "$b" --no-print-directory test >"$tmp/test-b.log" 2>&1 & test_b=$!
# Evidence that the two test stacks ran side by side: both had running containers.
overlap=0
while kill -0 "$test_a" 2>/dev/null || kill -0 "$test_b" 2>/dev/null; do
  running_a=$(docker ps -q --filter "label=com.docker.compose.project=$pa-test" | wc -l)
  running_b=$(docker ps -q --filter "label=com.docker.compose.project=$pb-test" | wc -l)
  if [ "$running_a" -gt 0 ] && [ "$running_b" -gt 0 ]; then overlap=1; fi
  sleep 1
done
status_a=0 status_b=0
wait "$test_a" || status_a=$?
wait "$test_b" || status_b=$?
tail -n 3 "$tmp/test-a.log" "$tmp/test-b.log"
[ "$status_a" = 0 ] || { cat "$tmp/test-a.log"; fail "make test failed in $pa"; }
[ "$status_b" = 0 ] || { cat "$tmp/test-b.log"; fail "make test failed in $pb"; }
[ "$overlap" = 1 ] || fail "the two test stacks never ran at the same time"

# The tests left the dev stacks alone: same API containers, the item still there.
[ "$(docker compose -p "$pa" -f "$a/docker-compose.yml" ps -q api)" = "$api_a" ] || fail "$pa's api was replaced"
[ "$(docker compose -p "$pb" -f "$b/docker-compose.yml" ps -q api)" = "$api_b" ] || fail "$pb's api was replaced"
has_item "$url_a" "$key_a" || fail "$pa lost its item during the tests"
# And the test stacks are gone.
for project in "$pa-test" "$pb-test"; do
  [ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" ] || fail "$project left containers"
done

say "PASS: $pa and $pb ran side by side (dev and tests) without sharing anything"
