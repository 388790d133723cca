#!/usr/bin/env bash
# Figures for the production image (`make image-report`): its size over its base
# image, and how long a rebuild takes after a change to a file under app/.
# Builds from a copy of the tracked files, so the checkout is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVICE_NAME=${SERVICE_NAME:-$(sed -n 's/^name = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}  # pyproject.toml: the one place

tag=$SERVICE_NAME:image-report
base=$(sed -nE 's/^FROM ([^ ]+) AS runtime$/\1/p' Dockerfile)
work=$(mktemp -d)
trap 'rm -rf "$work"; docker image rm -f "$tag" >/dev/null 2>&1 || true' EXIT
git ls-files -z | xargs -0 cp --parents -t "$work"

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

start=$(date +%s%N)
docker build -q -t "$tag" "$work" >/dev/null
first_ms=$(ms_since "$start")

rebuilds=()
for n in 1 2 3; do
  echo "# code-only change $n" >>"$work/app/main.py"
  start=$(date +%s%N)
  docker build -q -t "$tag" "$work" >/dev/null
  rebuilds+=("$(ms_since "$start")")
done
median=$(printf '%s\n' "${rebuilds[@]}" | sort -n | sed -n 2p)

base_bytes=$(docker image inspect -f '{{.Size}}' "$base")
image_bytes=$(docker image inspect -f '{{.Size}}' "$tag")
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

echo "base image ($base): $(mb "$base_bytes")"
echo "app image:          $(mb "$image_bytes")"
echo "added over base:    $(mb $((image_bytes - base_bytes)))  (budget 100 MB)"
echo "build (deps cached or not, as found): ${first_ms} ms"
echo "code-only rebuild:  median ${median} ms of ${rebuilds[*]} ms  (budget 10 s)"
