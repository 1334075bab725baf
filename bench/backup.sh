#!/usr/bin/env bash
# Backups of the TSBS day (100 hosts x 24 h, 8.64 M values, release build):
# a full backup, one with nothing new, one after an hour of new rows, the
# restore; how far a reader (--role reader) is behind its writer; with S3=1
# the same into moto, and ingest with and without the copy in a bucket
# (--object-store, pushed every second), alternating.
#
#   bash bench/backup.sh
#   S3=1 bash bench/backup.sh        # needs: pip install 'moto[server]' boto3
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
cat > "$WORK/tocsin.toml" <<TOML
[storage]
persist_max_mb = 4096
persist_max_age = "1d"
max_buffer_mb = 8192
object_store_interval = "1s"
[limits]
max_request_bytes = 268435456
TOML
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
# start NAME [extra serve flags]: sets PID, HTTP and GRPC.
start() { local name=$1; shift; serve "$name" --config "$WORK/tocsin.toml" "$@"; }
count() { curl -s -XPOST "$1/api/v1/sql" -d '{"sql":"SELECT count(*) AS n FROM cpu"}'; }
machine

start main
"$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$HTTP" --skip-queries | grep "^ingest:" || true
curl -s -XPOST "$HTTP/api/v1/admin/persist" > /dev/null
echo "data directory: $(du -sb "$WORK/main" | cut -f1) bytes"
t=$(now); "$T/tocsin" backup "$WORK/bk" --http-addr "$HTTP" > "$WORK/b1"; echo "full backup: $(since "$t") s: $(cat "$WORK/b1")"
t=$(now); "$T/tocsin" backup "$WORK/bk" --http-addr "$HTTP" > "$WORK/b2"; echo "nothing new: $(since "$t") s: $(cat "$WORK/b2")"
python3 - "$HTTP" <<'PY'
import sys, urllib.request
lines = [f"extra,host=h{h} v={i} {1451606400 + 86400 + i * 10}000000000" for h in range(100) for i in range(360)]
urllib.request.urlopen(urllib.request.Request(f"http://{sys.argv[1]}/write?db=public", data="\n".join(lines).encode()))
PY
curl -s -XPOST "$HTTP/api/v1/admin/persist" > /dev/null
t=$(now); "$T/tocsin" backup "$WORK/bk" --http-addr "$HTTP" > "$WORK/b3"; echo "after 36,000 new rows: $(since "$t") s: $(cat "$WORK/b3")"
t=$(now); "$T/tocsin" restore "$WORK/bk" --data-dir "$WORK/restored" > "$WORK/r1"; echo "restore: $(since "$t") s: $(head -1 "$WORK/r1")"
start restored
echo "rows: live $(count "$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/main.out")"), restored $(count "$HTTP")"

# reader_lag URL TAG [WRITER_CONFIG WHAT]: a writer and a reader of its
# copy at URL (pushed and fetched every second, or the writer configured by
# WRITER_CONFIG); for 15 rows written one at a time, the time until the
# reader answers with the row.
reader_lag() {
  local url=$1 tag=$2 what=${4:-"object_store_interval 1s on both"}
  if [ $# -ge 3 ]; then
    serve "lag-w-$tag" --config "$3" --object-store "$url"
  else
    start "lag-w-$tag" --object-store "$url"
  fi
  local W=$HTTP
  start "lag-r-$tag" --object-store "$url" --role reader
  local R=$HTTP
  python3 - "$W" "$R" "$tag, $what" <<'PY'
import json, statistics, sys, time, urllib.error, urllib.request
w, r, tag = sys.argv[1:]
def sql(addr, q):
    req = urllib.request.Request(f"http://{addr}/api/v1/sql", data=json.dumps({"sql": q}).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError:
        return []
# The writer's first push (at start) before the first write: writes are
# shipped only after it.
for _ in range(600):
    m = urllib.request.urlopen(f"http://{w}/metrics").read().decode()
    if any(l.startswith("tocsin_object_store_pushes_total ") and float(l.split()[1]) >= 1 for l in m.splitlines()):
        break
    time.sleep(0.1)
lags = []
for i in range(15):
    body = f"lag,probe=p v={i} {1_700_000_000 + i}000000000".encode()
    urllib.request.urlopen(urllib.request.Request(f"http://{w}/write?db=public", data=body))
    t0 = time.time()
    while sql(r, f"SELECT v FROM lag WHERE v = {i}") == []:
        time.sleep(0.02)
    lags.append(time.time() - t0)
lags.sort()
print(f"reader lag ({tag}): median {statistics.median(lags):.2f} s, "
      f"min {lags[0]:.2f}, max {lags[-1]:.2f} over {len(lags)} writes")
PY
}
reader_lag "file://$WORK/shared" "shared directory"
cat > "$WORK/shipping.toml" <<TOML
[storage]
object_store_interval = "60s"
wal = "object-store"
wal_ship_interval = "1s"
TOML
reader_lag "file://$WORK/shipped" "shipped WAL" "$WORK/shipping.toml" \
  "the writer pushing every 60 s and shipping its WAL every 1 s, the reader fetching every 1 s"

if [ "${S3:-0}" = 1 ]; then
  moto_bucket bench
  MAIN=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/main.out")
  t=$(now); "$T/tocsin" backup s3://bench/full --http-addr "$MAIN" > "$WORK/s1"; echo "full backup to moto: $(since "$t") s: $(cat "$WORK/s1")"
  t=$(now); "$T/tocsin" backup s3://bench/full --http-addr "$MAIN" > "$WORK/s2"; echo "nothing new, moto: $(since "$t") s: $(cat "$WORK/s2")"
  t=$(now); "$T/tocsin" restore s3://bench/full --data-dir "$WORK/from-s3" > "$WORK/s3"; echo "restore from moto: $(since "$t") s: $(head -1 "$WORK/s3")"
  reader_lag s3://bench/lag moto
  reader_lag s3://bench/lag-shipped "moto, shipped WAL" "$WORK/shipping.toml" \
    "the writer pushing every 60 s and shipping its WAL every 1 s, the reader fetching every 1 s"
  # Ingest of the day, with and without the copy pushed every second.
  for round in 1 2 3; do
    for mode in plain bucket; do
      if [ $mode = bucket ]; then start "ing-$mode-$round" --object-store "s3://bench/ingest-$round"; else start "ing-$mode-$round"; fi
      rate=$("$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$HTTP" --skip-queries | grep "^ingest:" | head -1)
      pushes=$(curl -s "$HTTP/metrics" | awk '/^tocsin_object_store_pushes_total /{print $2}')
      echo "ingest round $round, $mode: $rate (pushes during it: ${pushes:-none})"
      kill -TERM "$PID"; wait "$PID" || true
    done
  done
fi
