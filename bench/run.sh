#!/usr/bin/env bash
# Starts a release tocsin on a temporary data directory, runs tocsin-bench
# against it, prints the on-disk sizes, and stops the server.
#
#   bench/run.sh                      # 100 hosts x 24 h, integer values
#   bench/run.sh --float              # full-precision floats
#   COMPRESSION=lz4 bench/run.sh      # segment codec (zstd:3 by default)
#   PERSIST_MB=256 bench/run.sh --hours 240 --skip-queries   # sustained, persisting while ingesting
#   PEERS=1 bench/run.sh --runs 20    # and the 15 queries in DuckDB and ClickHouse (chdb), same run
set -euo pipefail
cd "$(dirname "$0")/.."
# One invocation, so that both packages share one feature set (one DataFusion build).
cargo build --release --locked -p tocsin -p tocsin-bench
T="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
cat > "$WORK/tocsin.toml" <<TOML
[storage]
compression = "${COMPRESSION:-zstd:3}"
partition = "${PARTITION:-1d}"
page_rows = ${PAGE_ROWS:-65536}
row_group_rows = ${RG_ROWS:-262144}
persist_max_mb = ${PERSIST_MB:-4096}
persist_max_age = "1d"
max_buffer_mb = 8192
[limits]
max_request_bytes = 268435456
TOML
"$T/tocsin" serve --data-dir "$WORK/data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --config "$WORK/tocsin.toml" > "$WORK/out" 2> "$WORK/server.log" &
PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$WORK/out")
HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/out")
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB; compression ${COMPRESSION:-zstd:3}"
# PEERS=1: the same statements, then, in DuckDB and ClickHouse (chdb) on the
# same data, answers checked (bench/tsbs_peers.py; pip install duckdb chdb).
EXTRA=()
if [ "${PEERS:-0}" = 1 ]; then EXTRA=(--statements-out "$WORK/statements.jsonl"); fi
"$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$HTTP" "${EXTRA[@]}" "$@"
if [ "${PEERS:-0}" = 1 ]; then
  python3 bench/tsbs_peers.py --http "$HTTP" --data-dir "$WORK/data" --statements "$WORK/statements.jsonl"
fi
echo "du: segments $(du -sb "$WORK/data/segments" | cut -f1) bytes, wal $(du -sb "$WORK/data/wal" | cut -f1) bytes"
kill -TERM $PID; wait $PID || true
