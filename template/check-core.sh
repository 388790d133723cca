#!/usr/bin/env bash
# `make check-core`: app/core stands on its own. On a throw-away clone of the
# committed HEAD, delete every domain (app/items, app/orders, app/health, any other
# package beside app/core), their tests, their migrations and app/main.py, which
# wires them; then run core's tests (tests/core) in the test stack. They must pass.
# `make lint` (import-linter) checks the same rule statically; this proves it.
# Optional: CHECK_PREFIX (the clone directory's name, so its Compose project), KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
unset MAKEFLAGS MAKELEVEL

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-core.XXXXXX")
dir="$tmp/${CHECK_PREFIX:-check-core}-$(printf '%04x%04x' "$RANDOM" "$RANDOM")"
export PROJECT
PROJECT=$(basename "$dir")
compose=(docker compose -p "$PROJECT-test" -f "$dir/docker-compose.test.yml")
started=$SECONDS
say() { printf '\n=== %s (%ds)\n' "$*" $((SECONDS - started)); }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  status=$?
  if [ "${KEEP:-0}" = 1 ]; then echo "KEEP=1: left in $dir"; exit "$status"; fi
  "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
  docker image rm "$PROJECT-dev" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT

say "clone $(git rev-parse --short HEAD) into $dir"
git clone --quiet "$repo" "$dir"
cd "$dir"

say "delete every domain, its tests and migrations, and app/main.py"
# Everything in app/ and tests/ that is not core's or shared by all tests.
keep='^(app/(__init__\.py|core)|tests/(__init__\.py|conftest\.py|issuer\.py|core))$'
for path in app/* tests/*; do
  [[ $path =~ $keep ]] || { echo "  rm $path"; rm -rf "$path"; }
done
# Core's own tables (idempotency_keys) keep their migrations; the domains' go, and the
# chain is relinked past them, as `make init examples=no` does it.
python3 - <<'PY'
import re
import sys
from pathlib import Path

sys.path.insert(0, "template")
from make_fork import relink_migrations

versions = Path("alembic/versions").resolve()
domain = [p for p in versions.glob("*.py") if re.search(r"\b(items|orders)\b", p.read_text())]
relink_migrations(domain)
for path in domain:
    print(f"  rm {path.relative_to(versions.parent.parent)}")
    path.unlink()
PY
# A hint for the failures below (pytest decides): names of deleted packages left in
# core or its tests. tests/conftest.py imports app.main only for the domains' tests.
grep -rnE '\b(app|tests)\.(items|orders|health|main)\b' app tests | grep -v '^tests/conftest.py:' \
  | sed 's/^/  still named: /' || true

say "tests/core in the test stack (project $PROJECT-test)"
"${compose[@]}" build tests
"${compose[@]}" run --rm tests pytest tests/core -p no:cacheprovider \
  || fail "core's tests fail without the domain packages"

say "PASS: app/core and its tests stand without any domain package"
