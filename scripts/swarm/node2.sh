#!/usr/bin/env bash
# A second Docker node on this machine, for `make swarm-e2e NODES=2`: a dockerd in a
# network namespace (and hostname) of its own, reached from the host through a veth
# pair, as a second VM would be through its network. Needs root.
#   node2.sh up IMAGE...          start it, linked to the host, and copy IMAGEs into it
#   node2.sh host-address         the host's end of the link: the manager advertises it
#   node2.sh join TOKEN MANAGER   join the swarm as a worker
#   node2.sh down                 leave, stop, and remove all of it (idempotent)
# Its engine answers on unix://$RUN/docker.sock: docker -H unix:///run/fsswarm-node2/docker.sock ...
#
# `nsenter --net`, not `ip netns exec` (which remounts /sys, hiding the host's
# cgroups from dockerd). No default route inside: the node has nowhere to pull
# from, and trying would stall on DNS; images are copied with docker save | load.
set -euo pipefail

NAME=fsswarm-node2
NETNS=/run/netns/$NAME
RUN=/run/$NAME
DATA=/var/lib/$NAME
HOST_IF=fsswarm-v0
NODE_IF=fsswarm-v1
# A /30 at the top of the swarm's address pool (10.201.0.0/16), which hands out
# /24s from the bottom; node 2's own bridges use 10.201.200.0/21.
HOST_ADDR=10.201.255.253
NODE_ADDR=10.201.255.254
NODE=(docker -H "unix://$RUN/docker.sock")

log() { echo "node2: $*" >&2; }

up() {
  local dockerd
  # The same dockerd as this engine's: on PATH, else the running one's binary.
  dockerd=$(command -v dockerd || readlink -f "/proc/$(pgrep -o -x dockerd)/exe")
  mkdir -p "$RUN" "$DATA"

  ip netns add "$NAME"
  ip link add "$HOST_IF" type veth peer name "$NODE_IF"
  ip link set "$NODE_IF" netns "$NAME"
  ip addr add "$HOST_ADDR/30" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  nsenter --net="$NETNS" sh -c "ip link set lo up && ip addr add $NODE_ADDR/30 dev $NODE_IF && ip link set $NODE_IF up"

  cat >"$RUN/daemon.json" <<JSON
{ "default-address-pools": [{ "base": "10.201.200.0/21", "size": 24 }] }
JSON
  # A hostname of its own (new UTS namespace), so the two nodes can be told apart.
  PATH="$(dirname "$dockerd"):$PATH" setsid nsenter --net="$NETNS" unshare --uts sh -c \
    "hostname $NAME && exec $dockerd --config-file $RUN/daemon.json --data-root $DATA \
     --exec-root $RUN/exec --pidfile $RUN/docker.pid -H unix://$RUN/docker.sock" \
    >"$RUN/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    "${NODE[@]}" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "${NODE[@]}" info >/dev/null 2>&1 || { tail -20 "$RUN/dockerd.log" >&2; exit 1; }

  log "copying $* (no registry)"
  docker save "$@" | "${NODE[@]}" load -q >/dev/null
}

join() {
  "${NODE[@]}" swarm join --token "$1" --advertise-addr "$NODE_ADDR" "$2:2377" >/dev/null
  log "joined the swarm as $NAME ($NODE_ADDR)"
}

down() {
  if [ -S "$RUN/docker.sock" ]; then
    "${NODE[@]}" swarm leave --force >/dev/null 2>&1 || true
    "${NODE[@]}" ps -aq | xargs -r "${NODE[@]}" rm -f >/dev/null 2>&1 || true
  fi
  if [ -f "$RUN/docker.pid" ]; then
    local pid
    pid=$(cat "$RUN/docker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do [ -d "/proc/$pid" ] || break; sleep 0.5; done
  fi
  # The node's leftover mounts (container layers, network namespaces), then its files.
  grep -oE " ($DATA|$RUN)[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$DATA" "$RUN"
  ip link del "$HOST_IF" 2>/dev/null || true
  [ -e "$NETNS" ] && ip netns del "$NAME"
  # Only the node it removed has left: the manager still lists it as down.
  if [ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ]; then
    docker node ls --filter "name=$NAME" -q | xargs -r docker node rm --force >/dev/null 2>&1 || true
  fi
  return 0
}

case ${1:-} in
  host-address) echo "$HOST_ADDR" ;;
  up) shift && up "$@" ;;
  join) join "$2" "$3" ;;
  down) down ;;
  *) echo "usage: node2.sh up IMAGE... | host-address | join TOKEN MANAGER | down" >&2 && exit 2 ;;
esac
