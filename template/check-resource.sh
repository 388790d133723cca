#!/usr/bin/env bash
# `make check-resource`: `make resource name=widgets` on a throw-away clone of the
# committed HEAD gives a tree that passes `make lint` and `make test` unchanged.
# Also checks that bad names are refused without writing anything. Removes what it
# created, its Compose projects (named after the clone's directory) and image too.
# Optional: CHECK_PREFIX (the clone directory's name, so its Compose project),
# WORKTREE=1 (use this checkout's uncommitted scaffold: scripts/new_resource.py,
# scripts/resource_template/, mk/resource.mk, pyproject.toml), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
name=widgets
unset PROJECT MAKEFLAGS MAKELEVEL

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-resource.XXXXXX")
dir="$tmp/${CHECK_PREFIX:-check-resource}-$(printf '%04x%04x' "$RANDOM" "$RANDOM")"
project=$(basename "$dir")
started=$SECONDS
say() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  status=$?
  if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: left in $dir"; exit "$status"; fi
  if [ -d "$dir" ]; then
    make -C "$dir" --no-print-directory down v=1 >/dev/null 2>&1 || true
    PROJECT=$project docker compose -p "$project-test" -f "$dir/docker-compose.test.yml" \
      down --volumes --remove-orphans >/dev/null 2>&1 || true
    docker image rm "$project-dev" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT

say "clone $(git rev-parse --short HEAD) into $dir"
git clone --quiet "$repo" "$dir"
if [ "${WORKTREE:-0}" = 1 ]; then
  cp -r --parents scripts/new_resource.py scripts/resource_template mk/resource.mk \
    pyproject.toml uv.lock "$dir"
  git -C "$dir" add --all
  git -C "$dir" -c user.name=check -c user.email=check@localhost commit --quiet -m worktree
fi
cd "$dir"

say "bad names are refused, and write nothing"
for bad in Widgets widget core items "two words" "$name --singular $name"; do
  # shellcheck disable=SC2086  # the last case passes an option on purpose
  if python3 scripts/new_resource.py $bad >/dev/null 2>&1; then fail "accepted: $bad"; fi
done
[ -z "$(git status --porcelain)" ] || fail "a refused name changed the tree: $(git status --short)"

say "make resource name=$name"
make --no-print-directory resource name="$name"
if make --no-print-directory resource name="$name" >/dev/null 2>&1; then
  fail "a second make resource name=$name was accepted"
fi
git status --short

# Both, whatever the first says: a lint finding should not hide a failing test.
say "make lint"
lint=0; make --no-print-directory lint || lint=$?
say "make test"
test=0; make --no-print-directory test || test=$?
[ "$lint" = 0 ] || fail "make lint failed on the scaffolded tree"
[ "$test" = 0 ] || fail "make test failed on the scaffolded tree"

say "PASS: make resource name=$name gives a tree that passes make lint and make test"
