#!/usr/bin/env bash
# Smoke test of the docker-compose cluster: build the image, start 3 nodes, check that clients
# need TLS and a certificate (and that a read certificate cannot write), write through one
# node and read through another, kill a node and write at the others, restart it and check it
# rejoins with the same string. Runs under its own compose project, network, volumes and host
# ports, and removes all of them on exit, whether it passed or not. Exits non-zero with a
# message saying which step failed.
#
#   deploy/smoke.sh          (SMOKE_SKIP_BUILD=1 to reuse an image built by cluster.sh build)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cluster=$top/deploy/cluster.sh
cli=${CARGO_TARGET_DIR:-$top/target}/release/strstore-cli

export COMPOSE_PROJECT_NAME="strstore-smoke-$$-$RANDOM"
export STRSTORE_NODES=3
# A private /24 for this run only (not the default 172.30.79, which a dev cluster may use).
export STRSTORE_NET="172.30.$((100 + RANDOM % 150))"
# Certificates of this run only: cluster.sh makes them from scratch, as on a fresh machine.
STRSTORE_TLS_HOST_DIR=$(mktemp -d /tmp/strstore-smoke-tls.XXXXXX)
export STRSTORE_TLS_HOST_DIR
tls=$STRSTORE_TLS_HOST_DIR

step() { printf '\n--- smoke: %s (%ss)\n' "$*" "$SECONDS"; }
fail() {
  echo "smoke: FAIL: $*" >&2
  exit 1
}

started=false
cleanup() {
  local rc=$?
  if $started; then
    if ((rc != 0)); then
      echo "smoke: containers and their last log lines, for the failure above:" >&2
      "$cluster" ps >&2 || true
      "$cluster" logs --no-color --tail 30 >&2 || true
    fi
    "$cluster" down -v --remove-orphans >/dev/null 2>&1 \
      || echo "smoke: WARNING: 'down -v' failed for project $COMPOSE_PROJECT_NAME" >&2
  fi
  rm -rf "$tls"
  if ((rc == 0)); then
    echo "smoke: PASS (${SECONDS}s)"
  else
    echo "smoke: FAILED (exit $rc) after ${SECONDS}s" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports for the nodes' client ports (the defaults 7379.. may be in use).
free_ports() {
  python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}

# The published client addresses of the given node numbers (1,3), comma-separated.
addrs_of() {
  local list="" i var
  for i in ${1//,/ }; do
    var=STRSTORE_PORT_$i
    list+="${list:+,}127.0.0.1:${!var}"
  done
  echo "$list"
}

# Runs strstore-cli against the given node numbers with the write certificate `up` made; the
# rest of the arguments are its command.
at() {
  local nodes=$1
  shift
  "$cli" --addr "$(addrs_of "$nodes")" --tls-ca "$tls/ca.pem" --tls-cert "$tls/client.pem" \
    --tls-key "$tls/client-key.pem" "$@"
}

# Runs strstore-cli against node 1 with only the given TLS flags and checks its exit code.
expect_exit() {
  local want=$1 what=$2 rc=0
  shift 2
  env -u STRSTORE_TLS_CA -u STRSTORE_TLS_CERT -u STRSTORE_TLS_KEY \
    "$cli" --addr "$(addrs_of 1)" --timeout 5 "$@" >/dev/null 2>&1 || rc=$?
  ((rc == want)) || fail "$what: strstore-cli $* exited $rc, expected $want"
  echo "ok: $what (exit $rc)"
}

expect_get() {
  local nodes=$1 want=$2 got
  got=$(at "$nodes" --timeout 5 get) || fail "get at node(s) $nodes failed"
  [[ $got == "$want" ]] || fail "get at node(s) $nodes returned '$got', expected '$want'"
}

container() {
  local id
  id=$("$cluster" compose ps -q "$1")
  [[ -n $id ]] || fail "no container for service $1"
  echo "$id"
}

command -v python3 >/dev/null || fail "python3 is needed to pick free ports"
read -r STRSTORE_PORT_1 STRSTORE_PORT_2 STRSTORE_PORT_3 < <(free_ports)
export STRSTORE_PORT_1 STRSTORE_PORT_2 STRSTORE_PORT_3
echo "smoke: project $COMPOSE_PROJECT_NAME, network $STRSTORE_NET.0/24," \
  "ports $STRSTORE_PORT_1 $STRSTORE_PORT_2 $STRSTORE_PORT_3"

if [[ ${SMOKE_SKIP_BUILD:-} == 1 ]]; then
  step "build skipped (SMOKE_SKIP_BUILD=1)"
else
  step "build"
  "$cluster" build || fail "deploy/cluster.sh build failed"
fi

step "up and wait until healthy"
started=true
"$cluster" up || fail "the cluster did not come up healthy"

step "clients need TLS and a certificate of the cluster's CA; a read certificate cannot write"
expect_exit 2 "a plaintext client is turned away" get
expect_exit 2 "a TLS client without a certificate is turned away" --tls-ca "$tls/ca.pem" get
expect_exit 1 "the healthcheck's read certificate may not append" --tls-ca "$tls/ca.pem" \
  --tls-cert "$tls/client-health.pem" --tls-key "$tls/client-health-key.pem" append x
expect_get 1 ''

step "append through node 1, get through node 2"
len=$(at 1 --timeout 10 append hello) || fail "append at node 1 failed"
[[ $len == 5 ]] || fail "append at node 1 printed length '$len', expected 5"
expect_get 2 hello

step "docker kill node2; writes at nodes 1 and 3 still succeed"
docker kill "$(container node2)" >/dev/null || fail "docker kill node2 failed"
sleep 3
# One invocation, so the client retries the *same* request until the others have removed
# node2 from the view: exactly once, however long that takes within the timeout.
len=$(at 1,3 --timeout 20 append ' world') || fail "append at nodes 1,3 after the kill failed"
[[ $len == 11 ]] || fail "append after the kill printed length '$len', expected 11"
expect_get 3 'hello world'
expect_get 1 'hello world'

step "start node2 again; it rejoins"
"$cluster" compose start node2 >/dev/null 2>&1 || fail "could not start node2 again"
deadline=$((SECONDS + 60))
until got=$(at 2 --timeout 2 get 2>/dev/null) && [[ $got == 'hello world' ]]; do
  ((SECONDS < deadline)) || fail "node2 did not rejoin within 60s (last get: '${got:-}')"
  sleep 1
done
echo "node2 answers get: '$got'"
len=$(at 2 --timeout 10 append '!') || fail "append at the rejoined node2 failed"
[[ $len == 12 ]] || fail "append at node2 printed length '$len', expected 12"
expect_get 1 'hello world!'
"$cluster" wait 30 || fail "not every node is healthy after the rejoin"

step "down -v"
