#!/usr/bin/env bash
# WAL shipping (docs/operations.md, "WAL shipping"): the cost of
# `wal = "object-store"` and `"object-store-sync"` against `"local"`, all
# three with the copy in a bucket (moto on loopback, pushed every 10 s):
#   - the TSBS day (8.64 M values) over gRPC, 2 streams of 10,000-row
#     requests (tocsin-bench's ingest);
#   - small writes: WRITERS threads (8 by default) each sending one-line
#     HTTP writes for 5 s: writes per second and latency.
# Three rounds, the modes alternating; medians in docs/benchmarks.md.
#
#   bash bench/wal_shipping.sh        # needs: pip install 'moto[server]' boto3
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
WRITERS=${WRITERS:-8}
machine
moto_bucket bench

# start NAME MODE: sets HTTP, GRPC and PID.
start() {
  local name=$1 mode=$2
  cat > "$WORK/$name.toml" <<TOML
[storage]
persist_max_mb = 4096
persist_max_age = "1d"
max_buffer_mb = 8192
object_store_interval = "10s"
wal = "$mode"
[limits]
max_request_bytes = 268435456
TOML
  serve "$name" --config "$WORK/$name.toml" --object-store "s3://bench/$name"
}

small_writes() {
  python3 - "$HTTP" "$WRITERS" <<'PY'
import statistics, sys, threading, time, urllib.request
http, writers = sys.argv[1], int(sys.argv[2])
lat, lock, stop = [], threading.Lock(), threading.Event()
def run(t):
    i, mine = 0, []
    while not stop.is_set():
        body = f"small,writer=w{t} v={i}i {1_700_000_000_000_000_000 + t * 100_000_000 + i}".encode()
        t0 = time.perf_counter()
        urllib.request.urlopen(urllib.request.Request(f"http://{http}/write?db=public", data=body)).read()
        mine.append(time.perf_counter() - t0)
        i += 1
    with lock:
        lat.extend(mine)
threads = [threading.Thread(target=run, args=(t,)) for t in range(writers)]
for t in threads:
    t.start()
time.sleep(5)
stop.set()
for t in threads:
    t.join()
lat.sort()
print(f"small writes: {len(lat) / 5:.0f}/s from {writers} writers, latency median "
      f"{statistics.median(lat) * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms")
PY
}

for round in 1 2 3; do
  for mode in local object-store object-store-sync; do
    start "$mode-$round" "$mode"
    ingest=$("$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$HTTP" --skip-queries | grep "^ingest:" | head -1)
    small=$(small_writes)
    pieces=$(curl -s "$HTTP/metrics" | awk '/^tocsin_object_store_wal_pieces_total /{print $2}')
    failures=$(curl -s "$HTTP/metrics" | awk '/^tocsin_object_store_wal_failures_total /{print $2}')
    echo "round $round, wal = $mode: $ingest | $small | WAL pieces shipped: ${pieces:-0}, failed: ${failures:-0}"
    kill -TERM "$PID"; wait "$PID" || true
  done
done
