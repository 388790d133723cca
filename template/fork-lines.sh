#!/usr/bin/env bash
# `make fork-lines`: the lines a fork inherits outside app/, tests/, alembic/ and
# uv.lock, and its biggest files: `make init name=acme-orders` (with any init options
# given as arguments, e.g. targets=vm examples=no), committed, on a throw-away clone
# of the committed HEAD. Nothing is started.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
unset MAKEFLAGS MAKELEVEL
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fork-lines.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
git clone --quiet "$repo" "$tmp/fork"
cd "$tmp/fork"
python3 template/make_fork.py --name acme-orders "${@/#/--}" >/dev/null
git add -A
git -c user.name=check -c user.email=check@example.com commit --quiet -m acme-orders
outside() { git ls-files | grep -v -E '^(app|tests|alembic)/|^uv.lock$'; }
echo "fork of $(git -C "$repo" rev-parse --short HEAD) (init ${*:-with no options}):"
echo "  $(outside | xargs cat | wc -l) lines outside app/, tests/, alembic/ and uv.lock"
echo "  app/: $(git ls-files app | xargs cat | wc -l), tests/: $(git ls-files tests | xargs cat | wc -l)"
echo "biggest:"
outside | xargs wc -l | grep -v ' total$' | sort -rn | head -n "${TOP:-15}"
