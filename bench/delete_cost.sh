#!/bin/bash
# Cost of a DELETE and of its tombstone on TSBS queries (docs/benchmarks.md
# "Deletions"): one server, the TSBS day ingested, persisted and compacted;
# the queries before a DELETE of one host's day, with its tombstone, and
# after the compaction round that removes it.
#   BIN=target/release/tocsin BENCH=target/release/tocsin-bench bash bench/delete_cost.sh
set -e
BIN=${BIN:-/work/main/target/debug/tocsin}
BENCH=${BENCH:-/work/main/target/debug/tocsin-bench}
D=/tmp/dbench/data; rm -rf /tmp/dbench; mkdir -p /tmp/dbench
pkill -f 'data-dir /tmp/dbench/data' || true; sleep 1; $BIN serve --data-dir $D --http-addr 127.0.0.1:19840 --grpc-addr 127.0.0.1:19841 > /tmp/dbench/log 2>&1 &
PID=$!; trap "kill $PID" EXIT
sleep 3
$BENCH --grpc-addr 127.0.0.1:19841 --http-addr 127.0.0.1:19840 --skip-queries > /tmp/dbench/ingest.txt 2>&1
curl -s -XPOST localhost:19840/api/v1/admin/persist >/dev/null
curl -s -XPOST 'localhost:19840/api/v1/admin/compact?full=true' >/dev/null
Q=single-groupby-1-1-1,single-groupby-5-8-1,cpu-max-all-8,double-groupby-1,high-cpu-1,lastpoint
run() { $BENCH --grpc-addr 127.0.0.1:19841 --http-addr 127.0.0.1:19840 --skip-ingest --runs 20 --queries $Q 2>&1 | grep -E '^[a-z0-9-]+ +[0-9.]+ ' ; }
echo "== before"; run
echo "== DELETE"; /usr/bin/time -f '%e s' curl -s localhost:19840/api/v1/sql -d '{"sql":"DELETE FROM cpu WHERE hostname = '"'"'host_7'"'"'"}'; echo
echo "== with the tombstone"; run
echo "== compact"; /usr/bin/time -f '%e s' curl -s -XPOST localhost:19840/api/v1/admin/compact; echo
echo "== after compaction"; run
