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
#   deploy/cluster.sh cli ARGS...    the host's strstore-cli, --addr set to every node
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
#                            in every node; default $CARGO_TARGET_DIR/docker-tls. Peers talk
#                            only over mutual TLS; `up` creates the CA and the certificates
#                            there with `strstore-server certs` the first time.
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

# Creates the CA and the certificates of the nodes that lack one (reusing the CA), so that
# the directory can be mounted into the containers. Always for 5 nodes: the 5-node variant
# then needs nothing more, and a certificate nobody uses costs nothing.
ensure_certs() {
  local missing="" i
  need_server
  for i in 1 2 3 4 5; do
    [[ -f $STRSTORE_TLS_HOST_DIR/node-$i.pem ]] || missing+="${missing:+,}$i"
  done
  if [[ -n $missing ]]; then
    "$bin/strstore-server" certs --dir "$STRSTORE_TLS_HOST_DIR" --nodes "$missing" \
      --hosts localhost,127.0.0.1 >/dev/null
    echo "TLS certificates for node(s) $missing written to $STRSTORE_TLS_HOST_DIR"
  fi
}

# Re-issues every certificate from the same CA and tells the running nodes to reload them.
renew() {
  need_server
  "$bin/strstore-server" certs --dir "$STRSTORE_TLS_HOST_DIR" --nodes 1,2,3,4,5 \
    --hosts localhost,127.0.0.1 >/dev/null
  compose kill -s SIGHUP
  echo "renewed the certificates in $STRSTORE_TLS_HOST_DIR and sent SIGHUP to the nodes"
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
    echo "client addresses: $(addrs)"
    ;;
  wait) wait_healthy "$@" ;;
  renew) renew ;;
  down | ps | logs) compose "$cmd" "$@" ;;
  compose) compose "$@" ;;
  cli)
    [[ -x $bin/strstore-cli ]] || die "$bin/strstore-cli not found; run 'deploy/cluster.sh build'"
    exec "$bin/strstore-cli" --addr "$(addrs)" "$@"
    ;;
  addrs) addrs ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
