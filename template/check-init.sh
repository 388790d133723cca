#!/usr/bin/env bash
# `make check-init`: `make init name=…` on a throw-away clone of the committed HEAD
# gives a renamed service that passes `make lint` and `make test`. Also checks that
# nothing still carries the template's name, that the rename changed only the name's
# one place (and the lock and README), that .env has fresh secrets, and that
# init is idempotent and refuses a second, different name. Removes what it created.
# INIT_ARGS="targets=swarm,k8s examples=no": init's options (`make check-init-options`);
# E2E=1: the fork's `make e2e` must pass too (it runs on every pull request of a fork).
# Optional: CHECK_PREFIX (the clone directory's name, so its Compose project),
# CHECK_API_PORT, CHECK_POSTGRES_PORT, CHECK_REDIS_PORT, CHECK_DEBUGPY_PORT, KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
name=acme-orders
template=fastapi-service

init_env=(
  API_PORT="${CHECK_API_PORT:-8000}" POSTGRES_PORT="${CHECK_POSTGRES_PORT:-5432}"
  REDIS_PORT="${CHECK_REDIS_PORT:-6379}" DEBUGPY_PORT="${CHECK_DEBUGPY_PORT:-5678}"
)
unset PROJECT API_PORT POSTGRES_PORT REDIS_PORT DEBUGPY_PORT DEBUGPY MAKEFLAGS MAKELEVEL

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-init.XXXXXX")
dir="$tmp/${CHECK_PREFIX:-check-init}-$(printf '%04x%04x' "$RANDOM" "$RANDOM")"
started=$SECONDS
say() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
setting() { sed -n "s/^$1=//p" "$dir/.env" | tail -n 1; }

cleanup() {
  status=$?
  if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: left in $dir"; exit "$status"; fi
  if [ -f "$dir/.env" ]; then
    project=$(setting PROJECT)
    make -C "$dir" --no-print-directory down v=1 >/dev/null 2>&1 || true
    docker compose -p "$project-test" -f "$dir/docker-compose.test.yml" down --volumes \
      --remove-orphans >/dev/null 2>&1 || true
    docker image rm "$project-dev" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # so the cleanup runs on Ctrl-C and kill too

say "clone $(git rev-parse --short HEAD) into $dir"
git clone --quiet "$repo" "$dir"
cd "$dir"

say "make init name=$name"
read -ra init_args <<<"${INIT_ARGS:-}"
env "${init_env[@]}" make --no-print-directory init name="$name" "${init_args[@]}"

left=$(git grep -n -I -i "$template" -- . ':!.template.toml' || true)
[ -z "$left" ] || fail "still named $template:"$'\n'"$left"
grep -q "^name = \"$name\"" pyproject.toml || fail "pyproject.toml: name"
grep -q '^# Acme orders$' README.md || fail "README.md: title"
grep -q "^name = \"$name\"" uv.lock || fail "uv.lock: the project's own entry"
# The name is data: init changes pyproject.toml, uv.lock and README.md; elsewhere it
# only deletes: the template's own files, the other targets' files, and the other
# targets' marked lines in the docs (template/make_fork.py, keep_marked).
modified=$(git diff --name-only --diff-filter=M -- pyproject.toml uv.lock README.md | tr '\n' ' ')
[ "$modified" = "README.md pyproject.toml uv.lock " ] || fail "init did not rename in all of: $modified"
added=$(git diff --numstat --diff-filter=M -- . ':!pyproject.toml' ':!uv.lock' ':!README.md' |
  awk '$1 != 0 || $3 !~ /^docs\/.*\.md$/ { print $3 }' | tr '\n' ' ')
[ -n "${INIT_ARGS:-}" ] || [ -z "$added" ] || fail "init changed more than the name: $added"
[ ! -e template ] && [ ! -e .ci ] && [ ! -e .github/workflows/template.yml ] || fail "template files left"
grep -q "^revision = \"$(git rev-parse HEAD)\"" .template.toml || fail ".template.toml: revision"
git diff --stat | tail -n 1
git add -A && git -c user.name=check -c user.email=check@example.com commit --quiet -m "$name"
[ "$(stat -c %a .env)" = 600 ] || fail ".env is readable by others"
secret=$(setting POSTGRES_PASSWORD)
[ "${#secret}" -ge 24 ] || fail ".env: POSTGRES_PASSWORD too short"
grep -q "^POSTGRES_PASSWORD=$secret$" .env.example && fail ".env: POSTGRES_PASSWORD is the example's"
[ -n "$(setting PROJECT)" ] || fail ".env: no PROJECT"

say "make init again: same name is a no-op, another name is refused"
before=$(git status --porcelain | sha256sum; sha256sum .env)
make --no-print-directory init name="$name"
[ "$(git status --porcelain | sha256sum; sha256sum .env)" = "$before" ] || fail "a second init changed the tree"
if make --no-print-directory init name=other-name 2>&1; then fail "init renamed twice"; fi

# Both, whatever the first says: a lint finding should not hide a failing test.
say "make lint"
lint=0; make --no-print-directory lint || lint=$?
say "make test"
test=0; make --no-print-directory test || test=$?
[ "$lint" = 0 ] || fail "make lint failed in the renamed tree"
[ "$test" = 0 ] || fail "make test failed in the renamed tree"
passed="make lint and make test"
if [ "${E2E:-0}" = 1 ]; then
  say "make e2e"
  make --no-print-directory e2e || fail "make e2e failed in the renamed tree"
  passed="make lint, make test and make e2e"
fi

say "PASS: make init name=$name ${INIT_ARGS:+$INIT_ARGS }gives a renamed tree that passes $passed"
