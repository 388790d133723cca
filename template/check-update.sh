#!/usr/bin/env bash
# `make check-update`: a fork made at an older template revision takes the template's
# later changes with `make update`. On a throw-away clone at that revision (the
# previous tag, else the first release's commit): `make init
# name=acme-orders`, a resource of the fork's own (`make resource name=widgets`) and
# a README edit, committed; then `make update` to this checkout's committed HEAD.
# Fails unless the update merged something, no file the fork did not change has a
# conflict, nothing carries the template's name, and `make lint` and `make test` pass
# (a conflict in a file the fork changed too is reported; lint and test judge it).
# Also: a `targets=k8s examples=no` fork at that revision, updated, must be exactly the
# fork `make init` makes at HEAD with those options, and an older ref must change nothing.
# Optional: OLD (the older revision), CHECK_PREFIX, KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
name=acme-orders
template=$(sed -n 's/^name = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
head=$(git rev-parse HEAD)
unset PROJECT API_PORT POSTGRES_PORT REDIS_PORT DEBUGPY_PORT DEBUGPY MAKEFLAGS MAKELEVEL SERVICE_NAME
# As on a developer's machine: Python writes its __pycache__ (CI's may not).
unset PYTHONDONTWRITEBYTECODE

# The older revision: the newest tag before HEAD, else (a clone without tags, as CI's
# may be) the first release's commit: the one that gave scripts/update.py its self-update.
old=${OLD:-$(git describe --tags --abbrev=0 HEAD~1 2>/dev/null ||
  git log --format=%H -S'def self_update' -- scripts/update.py | tail -n 1)}
[ -n "$old" ] || { echo "FAIL: no release before HEAD (a shallow clone?)" >&2; exit 1; }
old=$(git rev-parse "$old^{commit}")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-update.XXXXXX")
dir="$tmp/${CHECK_PREFIX:-check-update}-$(printf '%04x%04x' "$RANDOM" "$RANDOM")"
started=$SECONDS
say() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
commit() { git add -A && git -c user.name=check -c user.email=check@example.com commit --quiet -m "$1"; }

cleanup() {
  status=$?
  if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: left in $dir"; exit "$status"; fi
  if [ -f "$dir/.env" ]; then
    project=$(sed -n 's/^PROJECT=//p' "$dir/.env" | tail -n 1)
    PROJECT=$project docker compose -p "$project-test" -f "$dir/docker-compose.test.yml" \
      down --volumes --remove-orphans >/dev/null 2>&1 || true
    docker image rm "$project-dev" >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$old" != "$head" ] || fail "the older revision is HEAD: nothing to update"
say "a fork at $(git rev-parse --short "$old") ($(git rev-list --count "$old..$head") commits before HEAD)"
git clone --quiet --no-checkout "$repo" "$dir"
cd "$dir"
git checkout --quiet -B main "$old"
make --no-print-directory init name="$name"
commit "$name"
forked=$(git rev-parse HEAD)

say "the fork's own changes: make resource name=widgets, a README edit"
make --no-print-directory resource name=widgets
# Under the title, as a fork describes itself. Not appended: the template edits its last
# section now and then, and an append next to that edit is a conflict for a person to
# resolve, which would leave this check judging conflict markers, not a merge.
note="Acme's orders service. Our on-call runbook lives in the wiki."
{ head -n 1 README.md; printf '\n%s\n' "$note"; tail -n +2 README.md; } >"$tmp/README.md"
mv "$tmp/README.md" README.md
commit "widgets, and a README note"
ours=$(git diff --name-only "$old" HEAD | sort)

say "make update ref=$(git -C "$repo" rev-parse --short "$head")"
status=0; make --no-print-directory update ref="$head" | tee "$tmp/update.log" || status=$?
grep -qE '^  (updated|merged|added|deleted): [1-9]' "$tmp/update.log" || fail "the update merged nothing"
! grep -q __pycache__ "$tmp/update.log" || fail "the update merged the template's bytecode"
conflicts=$(grep -rlI --exclude-dir=.git '^<<<<<<< yours' . | sed 's|^\./||' | sort || true)
elsewhere=$(comm -23 <(printf '%s\n' $conflicts | sed '/^$/d') <(printf '%s\n' $ours))
[ -z "$elsewhere" ] || fail "conflicts in files the fork did not change:"$'\n'"$elsewhere"
# Where the fork changed the same lines, a conflict is the right answer: say so, and
# let lint and test judge the markers (a Python file with them fails both).
[ -z "$conflicts" ] || printf 'conflicts in files the fork changed too (expected):\n%s\n' "$conflicts"
[ "$status" = 0 ] || [ -n "$conflicts" ] || fail "make update exited $status"
git add -A
left=$(git grep -n -I -i "$template" -- . ':!.template.toml' || true)
[ -z "$left" ] || fail "the update brought back the template's name:"$'\n'"$left"
grep -q "^revision = \"$head\"" .template.toml || fail ".template.toml does not record $head"
grep -qxF "$note" README.md || fail "the update lost the fork's own README line"
commit "Update from the template"
echo "fork: $(git diff --shortstat "$forked" HEAD)"

# What CHANGELOG.md's upgrade notes ask of a fork by hand, done as a fork would: the
# fork's own routes get their scopes (added when the API began to require them).
say "the upgrade notes: scopes on the fork's own routes, then make fmt"
python3 - app/widgets/router.py <<'PY'
import re, sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
if "requires(" not in text:
    text = text.replace("from app.core.db import", "from app.core.auth.dependencies import requires\nfrom app.core.db import", 1)
    text = re.sub(r'@router\.get\(("[^"]*")', r'@router.get(\1, dependencies=[requires("widgets:read")]', text)
    text = text.replace("dependencies=[writes", 'dependencies=[requires("widgets:write"), writes')
    open(path, "w", encoding="utf-8").write(text)
PY
make --no-print-directory fmt >/dev/null
# Nothing to do for a fork made at a release that already asked for scopes.
[ -z "$(git status --porcelain)" ] || commit "Scopes on our own routes, as the upgrade notes say"

# A fork with other init options and no changes of its own, updated: exactly the fork
# `make init` makes at HEAD with those options (nothing it deleted comes back). Then an
# older ref: an update never takes a fork back.
lean_options=(targets=k8s examples=no)
say "make init ${lean_options[*]} at both revisions: the updated one is the fresh one"
make_lean() { # make_lean DIR REVISION (make init, as each revision's own Makefile runs it)
  git clone --quiet --no-checkout "$repo" "$1"
  (cd "$1" && git checkout --quiet -B main "$2" &&
    make --no-print-directory init name="$name" "${lean_options[@]}" >/dev/null && commit "$name")
}
make_lean "$tmp/lean" "$old"
make_lean "$tmp/fresh" "$head"
(cd "$tmp/lean" && make --no-print-directory update ref="$head" >"$tmp/lean.log" && commit update) ||
  fail "make update of the ${lean_options[*]} fork failed:"$'\n'"$(cat "$tmp/lean.log")"
# What each commits (modes and contents), .template.toml aside: it records each one's origin.
committed() { git -C "$1" ls-tree -r HEAD | grep -v $'\t.template.toml$'; }
apart=$(diff <(committed "$tmp/lean") <(committed "$tmp/fresh") || true)
[ -z "$apart" ] || fail "the updated ${lean_options[*]} fork is not the fresh one:"$'\n'"$apart"
(cd "$tmp/lean" && make --no-print-directory update ref="$old" >"$tmp/lean.log") ||
  fail "make update ref=<older> failed:"$'\n'"$(cat "$tmp/lean.log")"
grep -q "nothing to do" "$tmp/lean.log" || fail "make update ref=<older> did not refuse to go back"
[ -z "$(git -C "$tmp/lean" status --porcelain)" ] || fail "make update ref=<older> changed files"

say "make lint"
lint=0; make --no-print-directory lint || lint=$?
say "make test"
test=0; make --no-print-directory test || test=$?
[ "$lint" = 0 ] || fail "make lint failed in the updated fork"
[ "$test" = 0 ] || fail "make test failed in the updated fork"

say "PASS: a fork at $(git rev-parse --short "$old") updated to $(git rev-parse --short "$head"): no conflict in a file it did not change, lint and tests pass"
