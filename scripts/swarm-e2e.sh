#!/usr/bin/env bash
# The Swarm stack (deploy/swarm/stack.yml) tested for real: `make swarm-e2e [NODES=2]`.
#   1. Makes this engine a one-node swarm (its own address pool); with NODES=2, adds
#      a second dockerd in a network namespace of its own as a worker (node2.sh).
#   2. Deploys the stack with scripts/swarm/deploy.sh and waits for the api through
#      the proxy; makes an API key in an api task (every /api/v1 request sends it); waits for the backup service's first full backup, writes a row, and
#      checks that its WAL segment reaches the (encrypted) pgBackRest repository.
#   3. Rolls the api and the worker out to a new build under steady load: zero failed
#      requests, and an order created while the worker rolls has its job run
#      (confirmed_at set) within 30 s.
#   4. Makes a bad update (a database_url secret with a wrong password: new tasks
#      never turn healthy) under load: Swarm must roll back by itself, zero failures.
#      Then deploys an image whose api exits at once: deploy.sh must fail, with the api
#      (Swarm) and the worker (deploy.sh) back on the previous image, zero failures.
#   5. NODES=2: shows replicas on both nodes, drains node 2 and shows its tasks move.
#   6. Restore drill: deletes the orders and items, then scripts/swarm/restore.sh restores the
#      database to the time before it; the rows must be back, the stack serving again.
# Always removes the stack, its secrets and volumes, and leaves the swarm, even on
# failure. Refuses to run on an engine already in a swarm it did not create.
#
# Needs: Docker 26 (engine + client), python3, curl; root for NODES=2.
# Settings: NODES (1), SWARM_HTTP_PORT (18480), SWARM_HTTPS_PORT (18481),
# SWARM_ADDR_POOL (10.201.0.0/16), STACK (fsswarm).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/throwaway-env.sh
. scripts/lib/throwaway-env.sh
needs_examples "make swarm-e2e"
SERVICE_NAME=${SERVICE_NAME:-$(sed -n 's/^name = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)}  # pyproject.toml: the one place

export STACK=${STACK:-fsswarm}
NODES=${NODES:-1}
HTTP_PORT=${SWARM_HTTP_PORT:-18480}
ADDR_POOL=${SWARM_ADDR_POOL:-10.201.0.0/16}
BASE="http://127.0.0.1:${HTTP_PORT}"
IMAGE_A=$SERVICE_NAME:swarm-a
IMAGE_B=$SERVICE_NAME:swarm-b
IMAGE_BAD=$SERVICE_NAME:swarm-bad # IMAGE_B whose api exits at once (its worker runs)
# deploy/backup/Dockerfile's two targets, under tags of this script's own.
export DB_IMAGE=$SERVICE_NAME-postgres:swarm-e2e BACKUP_IMAGE=$SERVICE_NAME-backup:swarm-e2e
OWNER_LABEL=fsswarm.e2e # marks a swarm this script created
WORK=$(mktemp -d)
started=$SECONDS
created_swarm=0
node2_started=0
load_pid=

# deploy.sh's settings: images are local (no registry), the proxy on test ports.
export RESOLVE_IMAGE=never DOMAIN=:80 HTTP_PORT HTTPS_PORT=${SWARM_HTTPS_PORT:-18481}

log() { printf 'swarm-e2e [%3ds] %s\n' $((SECONDS - started)) "$*"; }
fail() {
  printf '\nswarm-e2e FAILED: %s\n' "$1" >&2
  docker stack ps "$STACK" --no-trunc --format '{{.Name}} {{.Image}} {{.Node}} {{.CurrentState}} {{.Error}}' >&2 || true
  docker service logs --tail 8 "${STACK}_api" >&2 2>&1 || true
  docker service logs --tail 8 "${STACK}_worker" >&2 2>&1 || true
  exit 1
}

# Removes the stack, its secrets and volumes, node 2, and leaves the swarm.
remove_swarm() {
  docker stack rm "$STACK" >/dev/null 2>&1
  for _ in $(seq 1 60); do # containers go away asynchronously
    [ -z "$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK")" ] &&
      [ -z "$(docker network ls -q --filter "label=com.docker.stack.namespace=$STACK")" ] && break
    sleep 1
  done
  docker secret ls -q --filter "name=${STACK}_" | xargs -r docker secret rm >/dev/null
  scripts/swarm/node2.sh down # idempotent: nothing to do after a one-node run
  docker swarm leave --force >/dev/null
  docker volume rm "${STACK}_pgdata" "${STACK}_pgbackrest" "${STACK}_pgsocket" \
    "${STACK}_caddy_data" "${STACK}_caddy_config" >/dev/null 2>&1
}

cleanup() {
  local status=$?
  set +e
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
  if [ "$created_swarm" = 1 ]; then
    log "cleanup: removing the stack, its secrets and volumes, leaving the swarm"
    remove_swarm
    # Made by `swarm init`; kept if anything else uses it.
    [ "$gwbridge_existed" = 0 ] && docker network rm docker_gwbridge >/dev/null 2>&1
  elif [ "$node2_started" = 1 ]; then
    scripts/swarm/node2.sh down
  fi
  docker image rm "$IMAGE_A" "$IMAGE_B" "$IMAGE_BAD" "$DB_IMAGE" "$BACKUP_IMAGE" >/dev/null 2>&1
  rm -rf "$WORK"
  log "engine swarm state: $(docker info --format '{{.Swarm.LocalNodeState}}')"
  exit "$status"
}

# --- Swarm mode is engine-wide: only ever touch a swarm this script made. ---
state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$state" != inactive ]; then
  self=$(docker info --format '{{.Swarm.NodeID}}')
  if [ -n "$self" ] && [ "$(docker node inspect -f "{{index .Spec.Labels \"$OWNER_LABEL\"}}" "$self" 2>/dev/null)" = 1 ]; then
    log "a swarm left by an earlier run: removing it first"
    remove_swarm || true
  else
    echo "swarm-e2e: this engine is already in a swarm ($state) that swarm-e2e did not create; refusing." >&2
    exit 1
  fi
fi
gwbridge_existed=0
docker network inspect docker_gwbridge >/dev/null 2>&1 && gwbridge_existed=1
trap cleanup EXIT

log "building $IMAGE_A and $IMAGE_B (one Dockerfile, two revisions)"
docker build -q -t "$IMAGE_A" --build-arg REVISION=swarm-a . >/dev/null
docker build -q -t "$IMAGE_B" --build-arg REVISION=swarm-b . >/dev/null
printf 'FROM %s\nCMD ["false"]\n' "$IMAGE_B" | docker build -q -t "$IMAGE_BAD" - >/dev/null
log "building $DB_IMAGE and $BACKUP_IMAGE (deploy/backup/Dockerfile)"
docker build -q --target db -t "$DB_IMAGE" deploy/backup >/dev/null
docker build -q --target backup -t "$BACKUP_IMAGE" deploy/backup >/dev/null

if [ "$NODES" = 2 ]; then
  log "starting node 2: a dockerd in its own network namespace, images copied in"
  node2_started=1
  scripts/swarm/node2.sh up "$IMAGE_A" "$IMAGE_B" redis:8
  advertise=$(scripts/swarm/node2.sh host-address)
else
  # The address of the interface holding the default route (swarm asks when there are several).
  advertise=$(ip -4 -o route get 192.0.2.1 2>/dev/null | sed -nE 's/.* src ([0-9.]+).*/\1/p')
  advertise=${advertise:-$(hostname -I | awk '{print $1}')}
fi
log "swarm init (advertising $advertise, address pool $ADDR_POOL)"
created_swarm=1
docker swarm init --advertise-addr "$advertise" --default-addr-pool "$ADDR_POOL" \
  --default-addr-pool-mask-length 24 >/dev/null
manager=$(docker info --format '{{.Swarm.NodeID}}')
# The proxy (host port, certificates) and Postgres (its volume) stay on this node.
docker node update --label-add "$OWNER_LABEL=1" --label-add fsswarm.proxy=true \
  --label-add fsswarm.db=true "$manager" >/dev/null

if [ "$NODES" = 2 ]; then
  scripts/swarm/node2.sh join "$(docker swarm join-token -q worker)" "$advertise"
  docker node ls
fi

log "secrets: throw-away values, never in an environment variable"
random() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
owner_password=$(random)
password=$(random)
printf %s "$owner_password" | docker secret create "${STACK}_postgres_password" - >/dev/null
printf %s "$password" | docker secret create "${STACK}_app_db_password" - >/dev/null
printf %s "postgresql://app:${password}@db:5432/app" | docker secret create "${STACK}_database_url" - >/dev/null
printf %s "postgresql://app_owner:${owner_password}@db:5432/app" |
  docker secret create "${STACK}_migrate_database_url" - >/dev/null
redis_password=$(random)
printf %s "$redis_password" | docker secret create "${STACK}_redis_password" - >/dev/null
printf %s "redis://:${redis_password}@redis:6379/0" | docker secret create "${STACK}_redis_url" - >/dev/null
# pgBackRest's secret options: an encrypted repository, as an off-site one must be.
printf '[global]\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=%s\n' "$(random)" |
  docker secret create "${STACK}_backup_conf" - >/dev/null
# For the bad update: what a mistyped rotation would look like.
printf %s "postgresql://app:wrong-${password}@db:5432/app" |
  docker secret create "${STACK}_database_url_bad" - >/dev/null

wait_ready() { # wait_ready SECONDS: /health/ready through the proxy
  local deadline=$((SECONDS + $1))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$BASE/health/ready")" = 200 ]; do
    [ $SECONDS -lt $deadline ] || fail "not ready through the proxy after $1 s"
    sleep 1
  done
}
api_tasks() { # the api's running tasks: image and node
  docker service ps "${STACK}_api" --filter desired-state=running --format '{{.Name}} {{.Image}} {{.Node}} {{.CurrentState}}'
}
start_load() {
  python3 scripts/swarm/load.py "$BASE" >"$WORK/load.json" &
  load_pid=$!
  sleep 3 # a baseline before the change
  kill -0 "$load_pid" 2>/dev/null || { load_pid=; fail "the load generator did not start"; }
}
stop_load() { # stop_load WHAT: stops the load, prints its figures, fails on any failed request
  sleep 3 # and after it
  kill -TERM "$load_pid"
  wait "$load_pid" || fail "the load generator failed"
  load_pid=
  python3 - "$1" "$WORK/load.json" <<'PY' || fail "$1: requests failed"
import json, sys
what, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
print(f"  {what}: {s['requests']} requests in {s['seconds']} s, {s['failures']} failed, "
      f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, worst {s['worst_ms']} ms")
for error in s["errors"]:
    print(f"    {error}")
sys.exit(0 if s["failures"] == 0 and s["requests"] >= 100 else 1)
PY
}

log "deploy $IMAGE_A: migration job first, then the api"
t=$SECONDS
deployed_at=$(date +%s)
scripts/swarm/deploy.sh "$IMAGE_A" || fail "first deploy"
wait_ready 120
log "ready through the proxy, $((SECONDS - t)) s after the first deploy started"
api_tasks

# Every /api/v1 route needs a credential: an API key, made as docs/swarm.md says (a one-off
# job with the migrations' secret: the api's role may not write keys; printed once).
# AUTH_ISSUER is empty here.
image=$(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK}_api")
docker service create --detach -q --name "${STACK}_api-key" --mode replicated-job \
  --restart-condition none --no-healthcheck --no-resolve-image --network "${STACK}_backend" \
  --env ENVIRONMENT=production \
  --secret "source=${STACK}_migrate_database_url,target=database_url,uid=10001,gid=10001,mode=0400" \
  "$image" python -m app.core.auth.keys create swarm-e2e \
  items:read items:write orders:read orders:write >/dev/null || fail "could not create the API key job"
deadline=$((SECONDS + 120))
until [[ "$(docker service ps --format '{{.CurrentState}}' "${STACK}_api-key")" =~ ^(Complete|Failed|Rejected) ]]; do
  [ $SECONDS -lt $deadline ] || fail "the API key job did not end within 120 s"
  sleep 1
done
API_KEY=$(docker service logs --raw "${STACK}_api-key" 2>&1 | grep '^sak_' | head -n 1 || true)
[[ "$API_KEY" == sak_* ]] ||
  fail "the key job printed no key: $(docker service logs --raw "${STACK}_api-key" 2>&1 | tail -n 5)"
docker service rm "${STACK}_api-key" >/dev/null
export API_KEY # load.py's, too
auth=(-H "X-API-Key: $API_KEY")
[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/api/v1/items?limit=1")" = 401 ] ||
  fail "an unauthenticated request was not refused with 401"
log "auth: an API key made by a one-off job as the owner; without it, 401"

# X-Forwarded-* only from the edge overlay (EDGE_SUBNET, the proxy's): through the proxy,
# the api logs the client; from a task on another network, not the address it claims.
logged_client() { # logged_client REQUEST_ID: the client address of the api's access line
  docker service logs --raw "${STACK}_api" 2>/dev/null | grep -F "\"request_id\":\"$1\"" |
    sed -nE 's/.*"client": ?"([^"]*)".*/\1/p' | head -n 1
}
edge=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "${STACK}_edge")
curl -sS -o /dev/null --max-time 5 -H "X-Request-ID: swarm-e2e-proxied-$$" "$BASE/openapi.json"
worker_container=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_worker" | head -1)
[ -n "$worker_container" ] || fail "no container of ${STACK}_worker on this node"
docker exec "$worker_container" python -c "import urllib.request as u; u.urlopen(u.Request('http://api:8000/openapi.json', \
  headers={'X-Forwarded-For': '203.0.113.66', 'X-Request-ID': 'swarm-e2e-spoofed-$$'}), timeout=5)" ||
  fail "the worker could not reach the api"
sleep 2 # the logs reach the service's log stream
proxied=$(logged_client "swarm-e2e-proxied-$$") spoofed=$(logged_client "swarm-e2e-spoofed-$$")
[ -n "$proxied" ] && [ -n "$spoofed" ] || fail "no access line for the probes (proxied: '$proxied', spoofed: '$spoofed')"
python3 -c 'import ipaddress, sys; sys.exit(ipaddress.ip_address(sys.argv[1]) in ipaddress.ip_network(sys.argv[2]))' \
  "$proxied" "$edge" || fail "the api logged the proxy ($proxied, in $edge) as the client"
[ "$spoofed" != 203.0.113.66 ] || fail "the api trusted X-Forwarded-For from a task outside the edge overlay"
log "forwarded headers trusted from the edge overlay ($edge) only: client $proxied through the proxy, $spoofed from the worker"

# Least privilege as on the VM: the api's role reads and writes, and may not change the
# schema; the tables belong to app_owner, which ran the migrations.
db_container=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_db" | head -1)
psql_as() { docker exec "$db_container" psql -X -q -t -A -v ON_ERROR_STOP=1 -U "$1" -d app -c "$2" 2>&1; }
[ "$(psql_as app 'SELECT count(*) >= 0 FROM items')" = t ] || fail "the api's role cannot read items"
for statement in "CREATE TABLE swarm_probe (id int)" "UPDATE api_keys SET scopes = '{}'" \
  "UPDATE alembic_version SET version_num = 'swarm_probe'"; do
  if out=$(psql_as app "$statement"); then fail "the api's role could run: $statement"; fi
  [[ "$out" == *"permission denied"* ]] || fail "'$statement' as app failed for another reason: $out"
done
[ "$(psql_as postgres "SELECT rolsuper FROM pg_roles WHERE rolname = 'app'")" = f ] ||
  fail "the api's role is a superuser"
[ "$(psql_as postgres "SELECT tableowner FROM pg_tables WHERE tablename = 'items'")" = app_owner ] ||
  fail "items is not owned by app_owner"
log "postgres: the api's role cannot CREATE TABLE, write API keys nor the revision; the tables belong to app_owner"

# Backups as on the VM: the backup service's first full backup, then a row's WAL
# segment in the repository. `docker exec` on the task's container: it runs on this node.
backup_container=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_backup" | head -1)
[ -n "$backup_container" ] || fail "no container of ${STACK}_backup on this node"
deadline=$((SECONDS + 180))
until docker exec "$backup_container" pgbackup list 2>/dev/null | grep -q 'full backup:'; do
  [ $SECONDS -lt $deadline ] || { docker service logs --tail 20 "${STACK}_backup" >&2; fail "no full backup after 180 s"; }
  sleep 2
done
listing=$(docker exec "$backup_container" pgbackup list)
# Its end as pgBackRest records it ("timestamp start/stop: ... / 2026-12-06 10:00:05+00").
stop=$(sed -n 's|.*timestamp start/stop: .* / \(.*\)$|\1|p' <<<"$listing" | head -1)
[ -n "$stop" ] || fail "no end time for the full backup in: $listing"
full_seconds=$(($(date -d "$stop" +%s) - deployed_at))
log "backup: a full backup in pgbackup list, done $full_seconds s after the first deploy started"
sed -n 's/^ *\(full backup:\|timestamp start\|wal archive min\/max\)/  \1/p' <<<"$listing"
created=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "${auth[@]}" -H 'content-type: application/json' \
  --data '{"name":"swarm-backup-probe"}' "$BASE/api/v1/items")
[ "$created" = 201 ] || fail "writing a row through the proxy: HTTP $created"
# The segment holding the row, closed now rather than at archive_timeout.
read -r segment switched < <(psql_as postgres "SELECT pg_walfile_name(pg_switch_wal()), extract(epoch FROM clock_timestamp())" | tr '|' ' ')
[ -n "$switched" ] || fail "pg_switch_wal() failed"
deadline=$((SECONDS + 60))
until [ "$(psql_as postgres "SELECT coalesce(last_archived_wal >= '$segment', false) FROM pg_stat_archiver")" = t ]; do
  [ $SECONDS -lt $deadline ] || fail "WAL segment $segment not archived after 60 s: $(psql_as postgres 'SELECT * FROM pg_stat_archiver')"
  sleep 1
done
archive_seconds=$(psql_as postgres "SELECT round(extract(epoch FROM last_archived_time) - $switched, 2) FROM pg_stat_archiver")
[ "$(psql_as postgres "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")" = 0 ] ||
  fail "WAL segments wait to be archived: $(psql_as postgres "SELECT string_agg(name, ' ') FROM pg_ls_archive_statusdir()")"
[ "$(psql_as postgres "SELECT failed_count FROM pg_stat_archiver")" = 0 ] || fail "the archive_command failed"
newest=$(docker exec "$backup_container" pgbackup list | sed -n 's|.*wal archive min/max ([0-9]*): [0-9A-F]*/\([0-9A-F]*\).*|\1|p' | tail -1)
[[ "$newest" > "$segment" || "$newest" = "$segment" ]] || fail "the repository's newest WAL is $newest, not $segment"
deadline=$((SECONDS + 60))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$backup_container")" = healthy ]; do
  [ $SECONDS -lt $deadline ] || fail "the backup service is not healthy: $(docker exec "$backup_container" pgbackup check)"
  sleep 2
done
log "backup: segment $segment archived ${archive_seconds} s after the switch (in the repository: up to $newest), none waiting; pgbackup check healthy"

# The edge as on the VM (deploy/Caddyfile): a body over the limit is the proxy's 413,
# as problem+json with the request id in header and body; no HSTS over plain HTTP.
refused=$(head -c 1100000 /dev/zero | curl -sS -D - --max-time 20 "${auth[@]}" -H 'Expect:' -H 'content-type: application/json' \
  --data-binary @- "$BASE/api/v1/items" | tr -d '\r')
rid=$(sed -nE 's/^[Xx]-[Rr]equest-[Ii][Dd]: (.+)$/\1/p' <<<"$refused")
[[ "$refused" == "HTTP/1.1 413"* ]] || fail "1.1 MB body: expected the proxy's 413, got: ${refused:0:300}"
[ -n "$rid" ] && [[ "$refused" == *"\"request_id\":\"$rid\""* ]] ||
  fail "the proxy's 413 lacks a request id in its header and body: ${refused:0:300}"
# The api's own 413 would pass the checks above; only its problem bodies name an instance.
[[ "$refused" != *'"instance"'* ]] || fail "the 413 came from the api, not the proxy"
[[ "$refused" != *"Strict-Transport-Security"* ]] || fail "HSTS sent over plain HTTP"
log "proxy: 1.1 MB body refused with a problem+json 413 carrying the request id; no HSTS over HTTP"

# An order's job (app/orders/jobs.py) sets its confirmed_at: the worker ran it.
item_id=$(curl -sS --fail --max-time 10 "${auth[@]}" -H 'content-type: application/json' \
  --data '{"name":"swarm-order-probe"}' "$BASE/api/v1/items" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') ||
  fail "creating the item the orders need"
order_confirmed() { # order_confirmed WHAT: an order through the proxy, confirmed within 30 s
  local order_id deadline confirmed
  order_id=$(curl -sS --fail --max-time 10 "${auth[@]}" -H 'content-type: application/json' \
    --data "{\"item_id\":\"$item_id\",\"quantity\":1}" "$BASE/api/v1/orders" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])') || fail "$1: creating an order"
  deadline=$((SECONDS + 30))
  until confirmed=$(curl -sS --fail --max-time 5 "${auth[@]}" "$BASE/api/v1/orders/$order_id" |
    python3 -c 'import json,sys; c = json.load(sys.stdin)["confirmed_at"]; print(c); sys.exit(c is None)'); do
    [ $SECONDS -lt $deadline ] || fail "$1: order $order_id not confirmed after 30 s (its job never ran)"
    sleep 0.5
  done
  log "$1: order $order_id confirmed by the worker at $confirmed"
}
worker_tasks() { # the worker's running tasks: image and state
  docker service ps "${STACK}_worker" --filter desired-state=running --format '{{.Name}} {{.Image}} {{.Node}} {{.CurrentState}}'
}
order_confirmed "before the update"

log "rolling update to $IMAGE_B (start-first) under load, an order created while the worker rolls"
start_load
t=$SECONDS
scripts/swarm/deploy.sh "$IMAGE_B" &
deploy_pid=$!
# deploy.sh runs the migration job first; the worker's update starts after it.
deadline=$((SECONDS + 180))
until [ "$(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK}_worker")" = "$IMAGE_B" ]; do
  kill -0 "$deploy_pid" 2>/dev/null || break # deploy.sh ended (its status is checked below)
  [ $SECONDS -lt $deadline ] || fail "the worker's update did not start within 180 s"
  sleep 0.5
done
log "worker update: $(docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "${STACK}_worker"); tasks:"
worker_tasks
order_confirmed "during the rolling update"
wait "$deploy_pid" || fail "rolling update"
update_seconds=$((SECONDS - t))
stop_load "rolling update ($update_seconds s)"
api_tasks
worker_tasks
[ "$(api_tasks | grep -c " $IMAGE_B ")" -ge 2 ] || fail "the api is not on $IMAGE_B"
[ "$(worker_tasks | grep -c " $IMAGE_B ")" -ge 1 ] || fail "the worker is not on $IMAGE_B"
order_confirmed "after the update"

log "bad update: database_url with a wrong password; Swarm must roll back by itself"
start_load
t=$SECONDS
docker service update --detach --quiet \
  --secret-rm "${STACK}_database_url" \
  --secret-add "source=${STACK}_database_url_bad,target=database_url,uid=10001,gid=10001,mode=0400" \
  "${STACK}_api" >/dev/null
deadline=$((SECONDS + 240))
until [ "$(docker service inspect -f '{{.UpdateStatus.State}}' "${STACK}_api")" = rollback_completed ]; do
  [ $SECONDS -lt $deadline ] || fail "no rollback after 240 s"
  sleep 1
done
rollback_seconds=$((SECONDS - t))
stop_load "bad update and rollback ($rollback_seconds s)"
docker service inspect -f '  {{.UpdateStatus.Message}}' "${STACK}_api"
secret=$(docker service inspect -f '{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{if eq .File.Name "database_url"}}{{.SecretName}}{{end}}{{end}}' "${STACK}_api")
[ "$secret" = "${STACK}_database_url" ] || fail "after the rollback the api uses secret $secret"
wait_ready 60
api_tasks

log "bad deploy: $IMAGE_BAD's api exits at once; Swarm rolls the api back, deploy.sh the worker"
start_load
t=$SECONDS
if scripts/swarm/deploy.sh "$IMAGE_BAD"; then fail "deploy.sh succeeded with $IMAGE_BAD"; fi
bad_deploy_seconds=$((SECONDS - t))
stop_load "bad deploy and both rolled back ($bad_deploy_seconds s)"
for service in api worker; do
  image=$(docker service inspect -f '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "${STACK}_$service")
  [ "$image" = "$IMAGE_B" ] || fail "after the failed deploy the $service is on $image, not $IMAGE_B"
done
wait_ready 60
worker_tasks
order_confirmed "after the failed deploy"

if [ "$NODES" = 2 ]; then
  worker=$(docker node ls --filter role=worker -q | head -1)
  if [ "$(api_tasks | awk '{print $3}' | sort -u | wc -l)" != 2 ]; then
    # Start-first placement can leave both replicas on one node (the old task still
    # counts when the new one is placed), and Swarm never rebalances by itself.
    log "both replicas on one node: spreading them (a stop-first forced update)"
    docker service update --quiet --force --update-order stop-first "${STACK}_api" >/dev/null
    docker service update --quiet --update-order start-first "${STACK}_api" >/dev/null
  fi
  log "replicas per node:"
  api_tasks
  [ "$(api_tasks | awk '{print $3}' | sort -u | wc -l)" = 2 ] || fail "the api's replicas are not on both nodes"
  log "draining node 2 under load: its tasks must move to node 1"
  start_load
  t=$SECONDS
  docker node update --availability drain "$worker" >/dev/null
  deadline=$((SECONDS + 120))
  until [ "$(api_tasks | grep -c " Running ")" -ge 2 ] &&
    ! api_tasks | awk '{print $3}' | grep -qvx "$(docker node inspect -f '{{.Description.Hostname}}' "$manager")"; do
    [ $SECONDS -lt $deadline ] || fail "node 2's tasks did not move after 120 s"
    sleep 1
  done
  drain_seconds=$((SECONDS - t))
  stop_load "drain of node 2 ($drain_seconds s)"
  api_tasks
  docker node update --availability active "$worker" >/dev/null
fi

log "restore drill: delete every order and item, then restore the database to the time before"
items_before=$(psql_as postgres "SELECT count(*) FROM items")
orders_before=$(psql_as postgres "SELECT count(*) FROM orders")
[ "$(psql_as postgres "SELECT count(*) FROM items WHERE name = 'swarm-backup-probe'")" = 1 ] ||
  fail "the probe row is missing before the restore"
target=$(psql_as postgres "SELECT now()")
sleep 1
# Orders first: each references its item.
psql_as postgres "DELETE FROM orders; DELETE FROM items" >/dev/null || fail "deleting the orders and items"
# Recovery to a time stops at the first commit after it: that commit's WAL must be in
# the repository too.
segment=$(psql_as postgres "SELECT pg_walfile_name(pg_switch_wal())")
until [ "$(psql_as postgres "SELECT coalesce(last_archived_wal >= '$segment', false) FROM pg_stat_archiver")" = t ]; do
  sleep 1
done
t=$SECONDS
scripts/swarm/restore.sh "$target" || fail "scripts/swarm/restore.sh"
restore_seconds=$((SECONDS - t))
wait_ready 120
db_container=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_db" | head -1)
items_after=$(psql_as postgres "SELECT count(*) FROM items")
[ "$items_after" = "$items_before" ] || fail "after the restore: $items_after items, $items_before before the delete"
orders_after=$(psql_as postgres "SELECT count(*) FROM orders")
[ "$orders_after" = "$orders_before" ] || fail "after the restore: $orders_after orders, $orders_before before the delete"
[ "$(psql_as postgres "SELECT count(*) FROM items WHERE name = 'swarm-backup-probe'")" = 1 ] ||
  fail "the probe row did not come back"
[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${auth[@]}" "$BASE/api/v1/items?limit=1")" = 200 ] ||
  fail "the api does not serve items after the restore"
log "restore drill: $items_after of $items_before items and $orders_after of $orders_before orders back, restored to $target in $restore_seconds s (scale down to serving)"
order_confirmed "after the restore (the worker scaled back up)"

log "PASSED: first full backup ${full_seconds} s, WAL archived ${archive_seconds} s after a switch, rolling update ${update_seconds} s, rollback ${rollback_seconds} s, bad deploy rolled back ${bad_deploy_seconds} s${drain_seconds:+, drain ${drain_seconds} s}, restore ${restore_seconds} s, zero failed requests"
