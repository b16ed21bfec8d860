#!/usr/bin/env bash
# Runs a strstore cluster of local processes on loopback.
#
#   deploy/local-cluster.sh start [N]   build release binaries, start N nodes (default 3)
#   deploy/local-cluster.sh stop        stop them (SIGTERM: they flush and exit)
#   deploy/local-cluster.sh status      which nodes run, where, and what they logged last
#   deploy/local-cluster.sh renew       new certificates from the same CA, then SIGHUP the nodes
#   deploy/local-cluster.sh wipe        stop and delete all data
#
# Node i listens for clients on 127.0.0.1:(7378+i) and for peers on 127.0.0.1:(7478+i) (with
# STRSTORE_BASE_PORT=B: B-1+i and B+99+i); data and logs live in .cluster/ at the top of the
# checkout (override with STRSTORE_CLUSTER_DIR).
# Peers talk over mutual TLS with certificates made once by `strstore-server certs` in
# .cluster/tls/. STRSTORE_CLIENT_TLS=true (and STRSTORE_CLIENT_AUTH=required) puts clients on
# TLS too. STRSTORE_FEATURES=strstore-server/failpoints builds the nodes with fault injection
# (server/src/failpoints.rs): node i then reads its failpoints from .cluster/n<i>.failpoints.
# STRSTORE_SERVER_ARGS adds flags to every node (e.g. "--max-string-bytes 1073741824").
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
dir=${STRSTORE_CLUSTER_DIR:-$top/.cluster}
bin=$top/target/release
tls=$dir/tls

base_port=${STRSTORE_BASE_PORT:-7379}
# glibc raises its mmap threshold each time a large block is freed, so the whole-string copies
# a snapshot makes end up on the heap and are never given back: after 1M appends (16 MB
# string) a node kept ~150 MiB RSS. A fixed 1 MiB threshold returns them: ~65 MiB.
malloc_mmap_threshold=${MALLOC_MMAP_THRESHOLD_:-1048576}
client_port() { echo $((base_port - 1 + $1)); }
peer_port() { echo $((base_port + 99 + $1)); }

wait_port() {
  local port=$1 deadline=$((SECONDS + 30))
  until (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
    if ((SECONDS > deadline)); then return 1; fi
    sleep 0.1
  done
}

# Creates the CA and the certificates of nodes 1..N that do not have one yet (the CA in
# $tls is reused, so running nodes keep trusting each other).
ensure_certs() {
  local n=$1 missing=""
  for i in $(seq 1 "$n"); do
    [[ -f $tls/node-$i.pem ]] || missing+="${missing:+,}$i"
  done
  if [[ -n $missing ]]; then
    "$bin/strstore-server" certs --dir "$tls" --nodes "$missing" --hosts localhost,127.0.0.1 \
      >/dev/null
    echo "TLS certificates for node(s) $missing written to $tls"
  fi
}

client_tls_on() { [[ ${STRSTORE_CLIENT_TLS:-false} =~ ^(1|true|yes|on)$ ]]; }

running_pid() {
  local pidfile=$dir/n$1.pid
  [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null && cat "$pidfile"
}

start() {
  local n=${1:-3}
  echo "building release binaries (first build takes a few minutes)..."
  (cd "$top" && cargo build --release --quiet -p strstore-server -p strstore-client --bins \
    ${STRSTORE_FEATURES:+--features "$STRSTORE_FEATURES"})
  mkdir -p "$dir"
  ensure_certs "$n"
  local peers="" addrs=""
  for i in $(seq 1 "$n"); do
    peers+="${peers:+,}$i=127.0.0.1:$(peer_port "$i")"
    addrs+="${addrs:+,}127.0.0.1:$(client_port "$i")"
  done
  echo "$n" > "$dir/size"
  for i in $(seq 1 "$n"); do
    if pid=$(running_pid "$i"); then
      echo "n$i already running (pid $pid)"
      continue
    fi
    # shellcheck disable=SC2086 # STRSTORE_SERVER_ARGS is split into flags on purpose
    STRSTORE_FAILPOINTS_FILE=$dir/n$i.failpoints \
      MALLOC_MMAP_THRESHOLD_=$malloc_mmap_threshold nohup "$bin/strstore-server" --id "$i" \
      --listen "127.0.0.1:$(client_port "$i")" --peer-listen "127.0.0.1:$(peer_port "$i")" \
      --peers "$peers" --data-dir "$dir/n$i" --tls-dir "$tls" ${STRSTORE_SERVER_ARGS:-} \
      >>"$dir/n$i.log" 2>&1 &
    echo $! > "$dir/n$i.pid"
  done
  for i in $(seq 1 "$n"); do
    if ! wait_port "$(client_port "$i")"; then
      echo "n$i did not start; its log ($dir/n$i.log) ends with:" >&2
      tail -n 20 "$dir/n$i.log" >&2
      exit 1
    fi
  done
  local tls_env=""
  if client_tls_on; then
    tls_env=" STRSTORE_TLS_CA=$tls/ca.pem"
    tls_env+=" STRSTORE_TLS_CERT=$tls/client.pem STRSTORE_TLS_KEY=$tls/client-key.pem"
  fi
  cat <<MSG
strstore: $n nodes up on loopback, peers over mutual TLS (data and logs in $dir)
$(for i in $(seq 1 "$n"); do echo "  n$i  clients 127.0.0.1:$(client_port "$i")  peers 127.0.0.1:$(peer_port "$i")"; done)

Try it:
  export PATH=$bin:\$PATH STRSTORE_ADDR=$addrs$tls_env
  strstore-cli append hello
  strstore-cli get
Stop it:  deploy/local-cluster.sh stop
MSG
}

stop() {
  local any=0
  for pidfile in "$dir"/n*.pid; do
    [[ -f $pidfile ]] || continue
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"; any=1
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
  done
  ((any)) && echo "stopped" || echo "nothing running"
}

status() {
  local n; n=$(cat "$dir/size" 2>/dev/null || echo 0)
  for i in $(seq 1 "$n"); do
    if pid=$(running_pid "$i"); then
      echo "n$i  running (pid $pid)  clients 127.0.0.1:$(client_port "$i")"
    else
      echo "n$i  stopped; last log line: $(tail -n 1 "$dir/n$i.log" 2>/dev/null)"
    fi
  done
}

# Renews every node's certificate and the client certificate from the same CA, then tells
# the running nodes to load them (new connections use them; nothing restarts).
renew() {
  local n; n=$(cat "$dir/size" 2>/dev/null || echo 0)
  ((n > 0)) || { echo "no cluster in $dir; run start first" >&2; exit 1; }
  "$bin/strstore-server" certs --dir "$tls" --nodes "$(seq -s, 1 "$n")" \
    --hosts localhost,127.0.0.1 >/dev/null
  for i in $(seq 1 "$n"); do
    if pid=$(running_pid "$i"); then kill -HUP "$pid"; fi
  done
  echo "renewed the certificates in $tls and sent SIGHUP to the running nodes"
}

case ${1:-} in
  start) start "${2:-3}" ;;
  stop) stop ;;
  status) status ;;
  renew) renew ;;
  wipe) stop; rm -rf "$dir"; echo "wiped $dir" ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
