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
cargo build --release --locked -p tocsin -p tocsin-bench
T="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
WRITERS=${WRITERS:-8}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$PORT" > /dev/null 2>&1 &
PIDS+=($!)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ALLOW_HTTP=true
for _ in $(seq 100); do curl -s "$AWS_ENDPOINT_URL" > /dev/null && break; sleep 0.2; done
python3 -c "import boto3; boto3.client('s3').create_bucket(Bucket='bench')"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "bucket: moto $(python3 -c 'import moto; print(moto.__version__)') on loopback"

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
  "$T/tocsin" serve --data-dir "$WORK/$name" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --config "$WORK/$name.toml" --object-store "s3://bench/$name" > "$WORK/$name.out" 2> "$WORK/$name.log" &
  PID=$!
  PIDS+=($PID)
  for _ in $(seq 300); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$WORK/$name.out")
  HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/$name.out")
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
