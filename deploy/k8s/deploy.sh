#!/usr/bin/env bash
# Deploy an overlay in the right order: the migration Job first, the api and the
# worker after it.
#
#   deploy/k8s/deploy.sh production        # the overlay's image tag (its `images:`)
#
# 1. Render the overlay once, so both steps apply exactly the same manifests.
# 2. Apply only the settings and the migration (labels component=config|migrate),
#    after deleting the previous Job (a Job's pod template cannot be changed).
# 3. Wait until the Job has completed; stop here, with its logs, if it failed.
# 4. Apply everything: both Deployments roll to the new image (maxUnavailable 0).
# 5. Wait for the rollout. A rollout that never gets ready fails here; then
#    `kubectl rollout undo deployment/api -n <namespace>` (and deployment/worker)
#    goes back.
# Needs kubectl with access to the cluster (KUBECONFIG). Timeouts: MIGRATE_TIMEOUT,
# ROLLOUT_TIMEOUT (seconds).
set -euo pipefail

overlay_name=${1:?usage: deploy/k8s/deploy.sh OVERLAY (e.g. production)}
overlay="$(dirname "$0")/overlays/$overlay_name"
migrate_timeout=${MIGRATE_TIMEOUT:-660}
rollout_timeout=${ROLLOUT_TIMEOUT:-600}

rendered=$(mktemp --suffix=.yaml)
trap 'rm -f "$rendered"' EXIT
kubectl kustomize "$overlay" >"$rendered"
# Every namespaced resource carries the overlay's namespace.
namespace=$(awk '/^  namespace: / {print $2; exit}' "$rendered")
echo "deploying $overlay_name into namespace $namespace"

# A Job still running is another deploy's migration: deleting it would kill that
# migration mid-way, and each deploy would then wait on the other's Job.
active=$(kubectl get job api-migrate -n "$namespace" --ignore-not-found -o jsonpath='{.status.active}')
if [[ -n $active ]]; then
  echo "a migration is still running (another deploy?): nothing was changed; deploy again once it has ended" >&2
  exit 1
fi
kubectl delete job api-migrate -n "$namespace" --ignore-not-found --wait=true
kubectl apply -f "$rendered" -l 'app.kubernetes.io/component in (config,migrate)'

# `kubectl wait` cannot wait for "complete or failed", so poll the Job's conditions.
deadline=$((SECONDS + migrate_timeout))
until conditions=$(kubectl get job api-migrate -n "$namespace" \
  -o jsonpath='{.status.conditions[?(@.status=="True")].type}') &&
  [[ $conditions == *Complete* || $conditions == *Failed* ]]; do
  if ((SECONDS > deadline)); then
    conditions="timed out after ${migrate_timeout}s"
    break
  fi
  sleep 2
done
kubectl logs job/api-migrate -n "$namespace" --tail=50 || true
if [[ $conditions != *Complete* ]]; then
  echo "migration did not complete ($conditions): the api and the worker were not touched" >&2
  exit 1
fi

kubectl apply -f "$rendered"
kubectl rollout status deployment/api -n "$namespace" --timeout="${rollout_timeout}s"
kubectl rollout status deployment/worker -n "$namespace" --timeout="${rollout_timeout}s"
