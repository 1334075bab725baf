#!/usr/bin/env bash
# Alerting benchmarks against a release tocsin that tocsin-alert-bench starts:
#   bench/alert.sh                 # latency (polled 1s rule and on_ingest) and capacity
#   bench/alert.sh latency --runs 200
#   bench/alert.sh capacity --rules 1000 --series 100000
set -euo pipefail
cd "$(dirname "$0")/.."
# One invocation, so that both packages share one feature set (one DataFusion build).
cargo build --release --locked -p tocsin -p tocsin-bench
T="${CARGO_TARGET_DIR:-target}/release"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB"
if [ $# -gt 0 ]; then
  "$T/tocsin-alert-bench" --tocsin "$T/tocsin" "$@"
else
  "$T/tocsin-alert-bench" --tocsin "$T/tocsin" latency
  "$T/tocsin-alert-bench" --tocsin "$T/tocsin" capacity
fi
