#!/usr/bin/env bash
# Throughput when one member is in trouble but alive (a gray failure), against the same
# cluster undisturbed, and how long a kill -9 stalls writes.
#
#   deploy/gray-bench.sh [--duration SECS] [--clients N] [--out DIR]
#
# Each phase runs on a fresh 3-node cluster of local processes (deploy/local-cluster.sh,
# mutual TLS, fsync on, ports from 17379) loaded by strstore-bench (closed loop, 16-byte
# appends, every client starting at its own node, 2 s warm-up):
#
#   undisturbed        nothing done
#   flapping member    n3 (not the master) paused with SIGSTOP for 1.5 s of every 3 s: never
#                      silent long enough to look dead, but every write waits for it
#   slow disk          every fdatasync of n3's log takes 50 ms longer (the wal-sync failpoint;
#                      the binaries are built with --features strstore-server/failpoints)
#   slow master disk   the same at n1, the master
#   lossy link         nftables drops 30 % of the packets to and from n3's peer port (the
#                      connections the others opened to n3; needs root)
#   kill -9 member     n3 killed 3 s into the run; the slowest request is the stall
#   kill -9 master     n1 (the master) killed the same way
#
# Prints a Markdown table (also written to DIR/gray.md, with the raw strstore-bench JSON in
# DIR/gray.jsonl). Default DIR: target/bench/gray-<date>.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$top/target}/release
out=$top/target/bench/gray-$(date +%Y%m%d-%H%M%S)
duration=20
clients=16
while (($#)); do
  case $1 in
    --duration) duration=$2 ;;
    --clients) clients=$2 ;;
    --out) out=$2 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gray-bench.sh: unknown option $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift 2
done

echo "gray-bench.sh: building release binaries (with failpoints, for the slow disk)..."
export STRSTORE_FEATURES=strstore-server/failpoints
(cd "$top" && cargo build --release --quiet -p strstore-server -p strstore-client --bins \
  --features "$STRSTORE_FEATURES")
mkdir -p "$out"
results=$out/gray.jsonl
: >"$results"
export STRSTORE_BASE_PORT=17379
cluster_dir=$(mktemp -d)
export STRSTORE_CLUSTER_DIR=$cluster_dir
addrs=127.0.0.1:17379,127.0.0.1:17380,127.0.0.1:17381
n3_peer_port=17481
table=strstore_gray_bench
disturber=""

stop_disturber() {
  if [[ -n $disturber ]]; then
    kill "$disturber" 2>/dev/null || true
    wait "$disturber" 2>/dev/null || true
    disturber=""
  fi
  local pid
  pid=$(cat "$cluster_dir/n3.pid" 2>/dev/null) && kill -CONT "$pid" 2>/dev/null || true
  nft delete table inet "$table" 2>/dev/null || true
  rm -f "$cluster_dir/n1.failpoints" "$cluster_dir/n3.failpoints"
}
cleanup() {
  stop_disturber
  "$top/deploy/local-cluster.sh" wipe >/dev/null 2>&1 || true
  rm -rf "$cluster_dir"
}
trap cleanup EXIT

fresh_cluster() {
  "$top/deploy/local-cluster.sh" wipe >/dev/null 2>&1 || true
  "$top/deploy/local-cluster.sh" start 3 >/dev/null
  "$bin/strstore-cli" --addr "$addrs" --timeout 30 status >/dev/null
}

pid_of() { cat "$cluster_dir/n$1.pid"; }

# Runs strstore-bench for --duration after a 2 s warm-up; `phase` names the row.
bench() {
  local phase=$1 secs=${2:-$duration}
  "$bin/strstore-bench" --addr "$addrs" --clients "$clients" --duration "$secs" --warmup 2 \
    --timeout 30 --json --tag "$phase" >>"$results"
}

flap() {
  local pid
  pid=$(pid_of 3)
  while true; do
    kill -STOP "$pid"
    sleep 1.5
    kill -CONT "$pid"
    sleep 1.5
  done
}

lossy_link() {
  nft -f - <<EOF
table inet $table {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport $n3_peer_port numgen random mod 100 < 30 drop
    tcp sport $n3_peer_port numgen random mod 100 < 30 drop
  }
}
EOF
}

kill_after() {
  local id=$1 pid
  pid=$(pid_of "$id")
  (sleep 5 && kill -9 "$pid") &
  disturber=$!
}

phase() {
  echo "gray-bench.sh: $1..."
  fresh_cluster
}

phase undisturbed
bench undisturbed

phase "flapping member"
flap &
disturber=$!
bench flapping
stop_disturber

phase "slow disk"
echo "wal-sync=sleep(50)" >"$cluster_dir/n3.failpoints"
bench slow-disk
stop_disturber

phase "slow master disk"
echo "wal-sync=sleep(50)" >"$cluster_dir/n1.failpoints"
bench slow-master-disk
stop_disturber

if [[ $(id -u) == 0 ]] && command -v nft >/dev/null; then
  phase "lossy link"
  lossy_link
  bench lossy
  stop_disturber
else
  echo "gray-bench.sh: skipping the lossy link (needs root and nft)"
fi

phase "kill -9 member"
kill_after 3
bench kill-member 8
stop_disturber

phase "kill -9 master"
kill_after 1
bench kill-master 8
stop_disturber

python3 - "$results" "$out/gray.md" <<'EOF'
import json, sys
runs = {r["tag"]: r for r in map(json.loads, open(sys.argv[1]))}
calm = runs["undisturbed"]["ops_per_sec"]
names = {
    "undisturbed": "undisturbed",
    "flapping": "one member flapping (SIGSTOP 1.5 s of 3 s)",
    "slow-disk": "one member's disk slow (fdatasync +50 ms)",
    "slow-master-disk": "the master's disk slow (fdatasync +50 ms)",
    "lossy": "one member's peer link dropping 30 % of packets",
    "kill-member": "kill -9 of a member, 3 s into the run",
    "kill-master": "kill -9 of the master, 3 s into the run",
}
lines = [
    "| phase | ops/s | kept | p99 ms | slowest request ms | errors |",
    "|---|---:|---:|---:|---:|---:|",
]
for tag, name in names.items():
    r = runs.get(tag)
    if r is None:
        continue
    lat = r["latency_us"]
    lines.append(
        f"| {name} | {r['ops_per_sec']:,.0f} | {100 * r['ops_per_sec'] / calm:.0f} % "
        f"| {lat['p99'] / 1000:.1f} | {lat['max'] / 1000:.0f} | {r['errors']} |"
    )
text = "\n".join(lines)
open(sys.argv[2], "w").write(text + "\n")
print(text)
EOF
echo "gray-bench.sh: wrote $out/gray.md"
