#!/usr/bin/env bash
# Runs a strstore cluster in docker containers (deploy/docker-compose.yml).
#
#   deploy/cluster.sh build          build release binaries and the image (no registry needed)
#   deploy/cluster.sh up             make TLS certificates if missing, start the nodes, and
#                                    wait until every one is healthy
#   deploy/cluster.sh wait           wait until every node is healthy
#   deploy/cluster.sh down [-v]      stop and remove the containers (-v: and their data)
#   deploy/cluster.sh ps | logs [ARGS...]   as docker-compose ps / logs
#   deploy/cluster.sh renew          new certificates from the same CA, then SIGHUP the nodes
#   deploy/cluster.sh cli ARGS...    the host's strstore-cli, --addr set to every node, over
#                                    TLS with the write certificate client.pem
#   deploy/cluster.sh env            prints the exports that let a shell's strstore-cli reach
#                                    the nodes that way: eval "$(deploy/cluster.sh env)"
#   deploy/cluster.sh compose ARGS...       any other docker-compose command, same files
#
# Environment:
#   STRSTORE_NODES=3|5       cluster size (5 adds deploy/docker-compose.5.yml); default 3
#   STRSTORE_IMAGE           image name; default strstore:latest
#   STRSTORE_PORT_<i>        host port of node i's client port; default 7378+i, on 127.0.0.1
#   COMPOSE_PROJECT_NAME     compose project (prefix of containers, network, volumes);
#                            default strstore
#   CARGO_TARGET_DIR         where cargo builds; default target/ at the top of the checkout
#   STRSTORE_TLS_HOST_DIR    the cluster's TLS material on the host, mounted read-only at /tls
#                            in every node; default $CARGO_TARGET_DIR/docker-tls. Peers and
#                            clients talk only over TLS (clients with a certificate, see
#                            node.env); `up` creates there, with `strstore-server certs`, the
#                            CA, the node certificates (for localhost, 127.0.0.1, node<i> and
#                            the node's address on the compose network), client.pem (role
#                            write) and client-health.pem (role read, for the healthcheck).
#
# The image has no base image: `build` copies the two release binaries, the shared libraries
# `ldd` lists for them, and a few files under /etc into a directory and loads it with
# `docker import`, so it works without any registry.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
deploy=$top/deploy
target=${CARGO_TARGET_DIR:-$top/target}
bin=$target/release
nodes=${STRSTORE_NODES:-3}
export STRSTORE_IMAGE=${STRSTORE_IMAGE:-strstore:latest}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-strstore}
STRSTORE_TLS_HOST_DIR=${STRSTORE_TLS_HOST_DIR:-$target/docker-tls}
[[ $STRSTORE_TLS_HOST_DIR == /* ]] || STRSTORE_TLS_HOST_DIR=$PWD/$STRSTORE_TLS_HOST_DIR
export STRSTORE_TLS_HOST_DIR # compose mounts it; bind mounts need an absolute path

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

case $nodes in
  3) files=(-f "$deploy/docker-compose.yml") ;;
  5) files=(-f "$deploy/docker-compose.yml" -f "$deploy/docker-compose.5.yml") ;;
  *) die "STRSTORE_NODES must be 3 or 5, not $nodes" ;;
esac

# The compose command: the `docker compose` plugin if present, else docker-compose (v1).
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose"
  else
    die "neither 'docker compose' nor 'docker-compose' is installed"
  fi
}

compose() {
  local cmd
  cmd=$(compose_cmd)
  # shellcheck disable=SC2086 # $cmd is one or two words on purpose
  $cmd "${files[@]}" "$@"
}

client_port() {
  local var=STRSTORE_PORT_$1
  echo "${!var:-$((7378 + $1))}"
}

# Every node's published client address, comma-separated (the form --addr takes).
addrs() {
  local list="" i
  for i in $(seq 1 "$nodes"); do
    list+="${list:+,}127.0.0.1:$(client_port "$i")"
  done
  echo "$list"
}

build() {
  echo "building release binaries..."
  (cd "$top" && cargo build --release --quiet -p strstore-server -p strstore-client --bins)
  local rootfs
  rootfs=$(mktemp -d)
  # shellcheck disable=SC2064 # expand $rootfs now
  trap "rm -rf '$rootfs'" EXIT
  mkdir -p "$rootfs"/{usr/local/bin,data,tmp,etc}
  chmod 1777 "$rootfs/tmp"
  local b lib
  for b in strstore-server strstore-cli; do
    [[ -x $bin/$b ]] || die "$bin/$b is missing after the build"
    if command -v strip >/dev/null; then
      strip -o "$rootfs/usr/local/bin/$b" "$bin/$b"
    else
      cp "$bin/$b" "$rootfs/usr/local/bin/$b"
    fi
    # Every absolute path ldd prints: the libraries and the dynamic loader.
    for lib in $(ldd "$bin/$b" | grep -o '/[^ ]*'); do
      cp -L --parents "$lib" "$rootfs/"
    done
  done
  printf 'root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  echo "importing image $STRSTORE_IMAGE..."
  tar -C "$rootfs" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/strstore-server"]' \
    --change 'ENV PATH=/usr/local/bin' \
    --change 'WORKDIR /data' \
    --change 'EXPOSE 7379 7479' \
    -m "strstore $(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)" \
    - "$STRSTORE_IMAGE" >/dev/null
  docker image ls "$STRSTORE_IMAGE"
}

need_server() {
  [[ -x $bin/strstore-server ]] \
    || die "$bin/strstore-server not found; run 'deploy/cluster.sh build' first"
}

# Node i's host names: what clients on the host, in the container and on the compose network
# dial (its address there depends on STRSTORE_NET: change it, then run `renew`).
node_hosts() {
  echo "localhost,127.0.0.1,node$1,${STRSTORE_NET:-172.30.79}.$((10 + $1))"
}

# Writes node `$1`'s certificate (and the write certificate client.pem) from the CA in the
# directory, making the CA if there is none.
issue_node() {
  "$bin/strstore-server" certs --dir "$STRSTORE_TLS_HOST_DIR" --nodes "$1" \
    --hosts "$(node_hosts "$1")" >/dev/null
}

# The healthcheck's certificate: role read, so a leaked copy cannot change the string.
issue_health() {
  "$bin/strstore-server" certs --dir "$STRSTORE_TLS_HOST_DIR" --client health --role read \
    >/dev/null
}

# Creates the CA and the certificates that are missing (reusing the CA), so that the directory
# can be mounted into the containers. Always for 5 nodes: the 5-node variant then needs nothing
# more, and a certificate nobody uses costs nothing.
ensure_certs() {
  local made="" i
  need_server
  for i in 1 2 3 4 5; do
    if [[ ! -f $STRSTORE_TLS_HOST_DIR/node-$i.pem ]]; then
      issue_node "$i"
      made+="${made:+,}$i"
    fi
  done
  [[ -f $STRSTORE_TLS_HOST_DIR/client.pem ]] \
    || "$bin/strstore-server" certs --dir "$STRSTORE_TLS_HOST_DIR" >/dev/null
  [[ -f $STRSTORE_TLS_HOST_DIR/client-health.pem ]] || issue_health
  [[ -z $made ]] || echo "TLS certificates for node(s) $made written to $STRSTORE_TLS_HOST_DIR"
}

# Re-issues every certificate from the same CA and tells the running nodes to reload them.
renew() {
  local i
  need_server
  for i in 1 2 3 4 5; do
    issue_node "$i"
  done
  issue_health
  compose kill -s SIGHUP
  echo "renewed the certificates in $STRSTORE_TLS_HOST_DIR and sent SIGHUP to the nodes"
}

# The exports that make strstore-cli reach the nodes' published ports with client.pem.
client_env() {
  echo "export STRSTORE_ADDR=$(addrs)"
  echo "export STRSTORE_TLS_CA=$STRSTORE_TLS_HOST_DIR/ca.pem"
  echo "export STRSTORE_TLS_CERT=$STRSTORE_TLS_HOST_DIR/client.pem"
  echo "export STRSTORE_TLS_KEY=$STRSTORE_TLS_HOST_DIR/client-key.pem"
}

# Waits until every node's healthcheck passes (timeout in seconds, default 60).
wait_healthy() {
  local deadline=$((SECONDS + ${1:-60})) ids states
  local format='{{.Name}} {{with .State.Health}}{{.Status}}{{else}}{{.State.Status}}{{end}}'
  while true; do
    ids=$(compose ps -q)
    [[ -n $ids ]] || die "no containers in project $COMPOSE_PROJECT_NAME; run 'up' first"
    # shellcheck disable=SC2086 # one id per word
    states=$(docker inspect -f "$format" $ids)
    if ! grep -qv ' healthy$' <<<"$states"; then
      echo "all $nodes nodes healthy"
      return 0
    fi
    if ((SECONDS > deadline)); then
      echo "$states" >&2
      die "nodes not healthy in time (see: deploy/cluster.sh logs)"
    fi
    sleep 1
  done
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
}

cmd=${1:-}
[[ -n $cmd ]] || usage
shift
case $cmd in
  build) build ;;
  up)
    docker image inspect "$STRSTORE_IMAGE" >/dev/null 2>&1 \
      || die "image $STRSTORE_IMAGE not found; run 'deploy/cluster.sh build' first"
    ensure_certs
    compose up -d "$@"
    wait_healthy
    echo "client addresses: $(addrs) (TLS with a client certificate; to use them from a shell:"
    echo "  eval \"\$(deploy/cluster.sh env)\"   then   strstore-cli append hello)"
    ;;
  wait) wait_healthy "$@" ;;
  renew) renew ;;
  down | ps | logs) compose "$cmd" "$@" ;;
  compose) compose "$@" ;;
  cli)
    [[ -x $bin/strstore-cli ]] || die "$bin/strstore-cli not found; run 'deploy/cluster.sh build'"
    # As environment, so that flags given here (another --tls-cert) take precedence.
    eval "$(client_env)"
    exec "$bin/strstore-cli" "$@"
    ;;
  env) client_env ;;
  addrs) addrs ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
