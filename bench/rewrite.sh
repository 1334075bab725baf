#!/usr/bin/env bash
# Last write wins under a whole-day rewrite (docs/storage.md, Last write
# wins): ingests the TSBS day, persists, ingests the same day again (every
# row repeats a series and time, as a re-import or a retried backfill
# would), persists, then times the queries while the day is overlapping
# (read through KeepLastExec), runs the compaction that merges it, and
# times them again.
#
#   bench/rewrite.sh                  # 100 hosts x 24 h, 20 runs per query
#   RUNS=50 bench/rewrite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
# Background compaction off: this script merges when it means to.
cat > "$WORK/tocsin.toml" <<TOML
[storage]
persist_max_mb = 4096
persist_max_age = "1d"
max_buffer_mb = 8192
[compaction]
enabled = false
[limits]
max_request_bytes = 268435456
TOML
serve data --config "$WORK/tocsin.toml"
machine
B=("$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$HTTP")
QUERIES=single-groupby-1-1-1,double-groupby-1,high-cpu-1,lastpoint,groupby-orderby-limit,cpu-max-all-8
echo "== first write of the day"
"${B[@]}" --skip-queries
echo "== the same day written again"
"${B[@]}" --skip-queries
sql() { curl -s -XPOST "http://$HTTP/api/v1/sql" -H 'content-type: application/json' -d "{\"sql\": \"$1\"}"; }
echo "rows: $(sql 'SELECT count(*) AS n FROM cpu')"
echo "overlapping partitions: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["databases"]["public"]["cpu"].get("overlapping"))' "$WORK/data/manifest.json")"
echo "== queries over the overlapping day (KeepLastExec)"
"${B[@]}" --skip-ingest --runs "${RUNS:-20}" --queries "$QUERIES"
echo "== compaction"
START=$(date +%s.%N)
curl -s -XPOST "http://$HTTP/api/v1/admin/compact?full=true"; echo
echo "compaction: $(echo "$(date +%s.%N) - $START" | bc) s"
echo "rows: $(sql 'SELECT count(*) AS n FROM cpu')"
echo "== queries after compaction"
"${B[@]}" --skip-ingest --runs "${RUNS:-20}" --queries "$QUERIES"
kill -TERM $PID; wait $PID || true
