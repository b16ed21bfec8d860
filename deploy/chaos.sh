#!/usr/bin/env bash
# Jepsen-style chaos test: concurrent clients, a nemesis, and a history checker.
#
#   deploy/chaos.sh --backend docker|netns --duration SECONDS \
#                   --nemesis mix|kill|pause|flap|partition|loss|lossy|slow|disk --seed N \
#                   --out DIR [MORE...]
#
# Builds the release binaries (and, for --backend docker, the image), then runs
# strstore-chaos, which starts a cluster, runs the workload under faults, heals, waits for the
# cluster to settle, checks the history and writes the report to DIR: summary.txt,
# history.jsonl, replicas.jsonl, faults.jsonl, timeline.svg and logs/. Exit code 0 if and only
# if every check holds; 1 if a check failed; 2 if the test could not run.
# `deploy/chaos.sh --help` lists every option (clients, nodes, timeouts).
#
# Needs root (network namespaces, nsenter) and nft and tc (Debian: nftables, iproute2).
# Environment: CHAOS_SKIP_BUILD=1 reuses the binaries and image already built.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$top/target}
backend=netns
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --backend) backend=${args[i + 1]:-} ;;
    --backend=*) backend=${args[i]#--backend=} ;;
    -h | --help) CHAOS_SKIP_BUILD=${CHAOS_SKIP_BUILD:-help} ;;
  esac
done

if [[ ${CHAOS_SKIP_BUILD:-} == help ]]; then
  (cd "$top" && cargo build --release --quiet -p strstore-tests --bin strstore-chaos)
elif [[ -z ${CHAOS_SKIP_BUILD:-} ]]; then
  echo "chaos.sh: building release binaries..."
  # With failpoints, for the slow-disk fault (the netns backend's nodes read them).
  (cd "$top" && cargo build --release --quiet -p strstore-server -p strstore-client \
    -p strstore-tests --bins --features strstore-server/failpoints)
  if [[ $backend == docker ]]; then
    "$top/deploy/cluster.sh" build
  fi
fi

for tool in nft tc nsenter ip; do
  command -v "$tool" >/dev/null || {
    echo "chaos.sh: '$tool' not found: apt-get install nftables iproute2 util-linux" >&2
    exit 2
  }
done

exec "$target/release/strstore-chaos" --bin-dir "$target/release" --deploy-dir "$top/deploy" \
  "$@"
