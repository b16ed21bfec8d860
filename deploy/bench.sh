#!/usr/bin/env bash
# Benchmarks fresh local clusters and writes a Markdown table and a chart.
#
#   deploy/bench.sh [--out DIR] [--duration SECS] [--nodes "3 5 7"] [--clients "1 16 64 256"]
#                   [--workloads "append get"] [--string-sizes "1KiB 1MiB 32MiB"]
#
# For each cluster size: starts a new cluster of local processes on loopback (mutual TLS
# between peers, fsync on, as deployed; ports from 17379 so a dev cluster can keep running),
# runs strstore-bench (closed loop, 16-byte values, 2 s warm-up excluded) for each workload and
# client count, then stops and deletes it. `get` runs against a 16-byte string (a get returns
# the whole string). On the first cluster size it also measures 64-client appends with the
# string preloaded to each of --string-sizes. Results: DIR/results.jsonl (one strstore-bench
# --json object per run), DIR/results.md and DIR/results.svg (throughput and p99 vs clients).
# Default DIR: target/bench/<date>.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$top/target}/release
out=$top/target/bench/$(date +%Y%m%d-%H%M%S)
duration=10
nodes="3 5 7"
clients="1 16 64 256"
workloads="append get"
sizes="1KiB 1MiB 32MiB"
while (($#)); do
  case $1 in
    --out) out=$2 ;;
    --duration) duration=$2 ;;
    --nodes) nodes=$2 ;;
    --clients) clients=$2 ;;
    --workloads) workloads=$2 ;;
    --string-sizes) sizes=$2 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "bench.sh: unknown option $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift 2
done

echo "bench.sh: building release binaries..."
(cd "$top" && cargo build --release --quiet -p strstore-server -p strstore-client --bins)
mkdir -p "$out"
results=$out/results.jsonl
: >"$results"
export STRSTORE_BASE_PORT=17379
cluster_dir=$(mktemp -d)
export STRSTORE_CLUSTER_DIR=$cluster_dir
cleanup() { "$top/deploy/local-cluster.sh" wipe >/dev/null 2>&1 || true; rm -rf "$cluster_dir"; }
trap cleanup EXIT

cli() { "$bin/strstore-cli" --addr "$addrs" --timeout 60 "$@"; }

bytes_of() {
  case $1 in
    *KiB) echo $((${1%KiB} * 1024)) ;;
    *MiB) echo $((${1%MiB} * 1024 * 1024)) ;;
    *) echo "$1" ;;
  esac
}

# Sets the string to SIZE bytes, in appends of at most 1 MiB (the default value limit).
preload() {
  local total chunk
  total=$(bytes_of "$1")
  cli set x >/dev/null
  total=$((total - 1))
  while ((total > 0)); do
    chunk=$((total > 1048576 ? 1048576 : total))
    head -c "$chunk" /dev/zero | tr '\0' a | cli append - >/dev/null
    total=$((total - chunk))
  done
}

bench() {
  echo "  $*" >&2
  "$bin/strstore-bench" --addr "$addrs" --duration "$duration" --warmup 2 --json "$@" \
    >>"$results"
}

# What one durable write costs on this disk: every append waits for two in a row (the origin's
# log, then the other members'), so it bounds the latency of a lone client.
sync_us=$(dd if=/dev/zero of="$cluster_dir/sync-probe" bs=512 count=2000 oflag=dsync 2>&1 |
  awk -F', ' '/copied/ { split($3, t, " "); printf "%.0f", t[1] / 2000 * 1e6 }')
rm -f "$cluster_dir/sync-probe"
echo "bench.sh: a 512-byte O_DSYNC append takes ${sync_us} us here"

first=true
for n in $nodes; do
  echo "bench.sh: $n nodes"
  "$top/deploy/local-cluster.sh" start "$n" >/dev/null
  addrs=$(seq -s, "$STRSTORE_BASE_PORT" $((STRSTORE_BASE_PORT + n - 1)) | sed 's/\([0-9]*\)/127.0.0.1:\1/g')
  cli status >/dev/null
  for w in $workloads; do
    [[ $w == get ]] && cli set 0123456789abcdef >/dev/null
    for c in $clients; do
      bench --workload "$w" --clients "$c"
    done
  done
  if $first; then
    for size in $sizes; do
      preload "$size"
      bench --workload append --clients 64 --tag "string=$size"
    done
    first=false
  fi
  "$top/deploy/local-cluster.sh" wipe >/dev/null
done

machine="Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
machine+=", $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM"
machine+=", Linux $(uname -r); nodes and load generator on the same machine, loopback"
machine+="; disk: a 512-byte O_DSYNC append takes ${sync_us} us on average (dd)."
"$bin/strstore-bench-report" --in "$results" --out "$out" --machine "$machine"
echo "bench.sh: wrote $out/results.md and $out/results.svg"
