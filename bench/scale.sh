#!/usr/bin/env bash
# Scale bench (issue 17): 30 days of TSBS cpu-only data at 100 hosts
# (259.2 M values) into a server whose copy goes to an S3 bucket (moto on
# loopback), with the default configuration otherwise, but for the
# ingest: background compaction off and a persist every 32 MiB of buffer
# (a segment per day or so, as a server that persists every 10 minutes
# leaves before its partitions are merged), so that the full compaction
# after it does every merge while its resident set is sampled. Reports ingest,
# bytes per value on disk and in the bucket after a full compaction, the
# bucket's object count, the server's peak resident set during compaction,
# then a 1 h roll-up computed at the next start, and the 30-day
# double-groupby queries from the raw rows and from the roll-up (answers
# compared, medians of RUNS runs).
#
#   bash bench/scale.sh                 # needs: pip install 'moto[server]' boto3
#   DAYS=7 RUNS=10 bash bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p tocsin -p tocsin-bench
T="${CARGO_TARGET_DIR:-target}/release"
DAYS=${DAYS:-30}
RUNS=${RUNS:-20}
WORK=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB; commit $(git rev-parse --short HEAD)"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$PORT" > "$WORK/moto.log" 2>&1 &
PIDS+=($!)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
  AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ALLOW_HTTP=true
for _ in $(seq 100); do curl -s "$AWS_ENDPOINT_URL" > /dev/null && break; sleep 0.2; done
python3 -c "import boto3; boto3.client('s3').create_bucket(Bucket='scale')"
URL=s3://scale/tsbs

# start NAME [extra serve flags]: sets PID, HTTP and GRPC.
start() {
  local name=$1; shift
  "$T/tocsin" serve --data-dir "$WORK/data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --object-store "$URL" "$@" > "$WORK/$name.out" 2> "$WORK/$name.log" &
  PID=$!
  PIDS+=($PID)
  for _ in $(seq 600); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$WORK/$name.out")
  HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/$name.out")
}
metric() { curl -s "http://$HTTP/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# The copy in the bucket holds everything up to now: one more push completed.
pushed() {
  local before; before=$(metric tocsin_object_store_pushes_total)
  for _ in $(seq 600); do
    [ "$(metric tocsin_object_store_pushes_total)" != "$before" ] && return 0
    sleep 0.5
  done
  echo "no push to the bucket in 5 minutes" >&2; return 1
}
bucket() {
  python3 - "$1" <<'PY'
import boto3, sys
n = size = 0
for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="scale", Prefix="tsbs/"):
    for o in page.get("Contents", []):
        n += 1
        size += o["Size"]
print(f"{n} objects, {size} bytes, {size / float(sys.argv[1]):.3f} bytes/value")
PY
}

cat > "$WORK/ingest.toml" <<TOML
[storage]
persist_max_mb = 32
[compaction]
enabled = false
TOML
HOURS=$((DAYS * 24))
VALUES=$((100 * HOURS * 360 * 10))
start ingest --config "$WORK/ingest.toml"
echo "== ingest: $DAYS days, 100 hosts, $VALUES values"
"$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$HTTP" --hours "$HOURS" --skip-queries 2>&1 \
  | grep -v '^  ingest ' | sed 's/^/  /'
t=$(now); curl -s -XPOST "http://$HTTP/api/v1/admin/persist" > /dev/null; echo "persist: $(since "$t") s"
echo "resident set during ingest: peak $(( $(awk '/^VmHWM/{print $2}' "/proc/$PID/status") / 1024 )) MiB"
echo "before compaction: $(find "$WORK/data/segments" "$WORK/data/packs" -type f 2>/dev/null | wc -l) files, $(du -sb "$WORK/data/segments" | cut -f1) bytes of segments"

# Peak resident set during the full compaction, sampled every 50 ms.
( peak=0
  while kill -0 "$PID" 2>/dev/null && [ ! -e "$WORK/compacted" ]; do
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    sleep 0.05
  done
  echo "$peak" > "$WORK/peak" ) &
rss_before=$(awk '/^VmRSS/{print $2}' "/proc/$PID/status")
t=$(now)
curl -s -XPOST "http://$HTTP/api/v1/admin/compact?full=true" > "$WORK/compact.json"
echo "full compaction: $(since "$t") s: $(head -c 300 "$WORK/compact.json")"
touch "$WORK/compacted"; sleep 0.2
echo "resident set: $((rss_before / 1024)) MiB before compaction, peak $(( $(cat "$WORK/peak") / 1024 )) MiB during it"
SEG=$(du -sb "$WORK/data/segments" | cut -f1)
echo "after compaction: $(find "$WORK/data/segments" "$WORK/data/packs" -type f 2>/dev/null | wc -l) files, $SEG bytes of segments, $(python3 -c "print(f'{$SEG / $VALUES:.3f}')") bytes/value"
t=$(now); pushed; echo "bucket (pushed in $(since "$t") s): $(bucket "$VALUES")"
kill -TERM "$PID"; wait "$PID" || true

# The roll-up, configured at the next start: it computes every closed hour
# of the source from its oldest row on.
cat > "$WORK/rollup.toml" <<TOML
[[rollup]]
name = "cpu_1h"
source = "public.cpu"
target = "public.cpu_1h"
bucket = "1h"
backfill = "5000d"
max_buckets = 720
aggregates = ["avg", "min", "max", "count"]
TOML
t=$(now)
start rollup --config "$WORK/rollup.toml"
EXPECT=$((100 * HOURS))
for _ in $(seq 1200); do
  n=$(curl -s -XPOST "http://$HTTP/api/v1/sql" -d '{"sql":"SELECT count(*) AS n FROM cpu_1h"}' | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r[0]["n"] if isinstance(r, list) and r else 0)' 2>/dev/null || echo 0)
  [ "$n" = "$EXPECT" ] && break
  sleep 0.5
done
echo "roll-up: $n of $EXPECT rows (hours x hosts) in $(since "$t") s from the start"
curl -s -XPOST "http://$HTTP/api/v1/admin/persist" > /dev/null
curl -s -XPOST "http://$HTTP/api/v1/admin/compact?full=true" > /dev/null

python3 - "$HTTP" "$RUNS" "$DAYS" <<'PY'
import json, math, statistics, sys, time, http.client
host, runs, days = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fields = ["usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait",
          "usage_irq", "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice"]
a, b = "2016-01-01T00:00:00Z", f"2016-01-{1 + days:02d}T00:00:00Z" if days < 31 else None
if b is None:
    import datetime
    b = (datetime.datetime(2016, 1, 1) + datetime.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
conn = http.client.HTTPConnection(host)
def sql(q, fmt="json"):
    conn.request("POST", "/api/v1/sql", json.dumps({"sql": q, "format": fmt}), {"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{r.status}: {body[:300]!r} for {q}")
    return body
def raw(n):
    aggs = ", ".join(f"avg({f}) AS mean_{f}" for f in fields[:n])
    return (f"SELECT time_bucket(INTERVAL '1 hour', ts) AS hour, hostname, {aggs} FROM cpu "
            f"WHERE ts >= '{a}' AND ts < '{b}' GROUP BY hour, hostname ORDER BY hour, hostname")
def rolled(n):
    # The weighted mean of the buckets' means: right for any grouping of the roll-up's rows.
    aggs = ", ".join(f"sum({f}_avg * {f}_count) / sum({f}_count) AS mean_{f}" for f in fields[:n])
    return (f"SELECT ts AS hour, hostname, {aggs} FROM cpu_1h "
            f"WHERE ts >= '{a}' AND ts < '{b}' GROUP BY hour, hostname ORDER BY hour, hostname")
def same(x, y):
    if len(x) != len(y):
        return f"{len(x)} rows against {len(y)}"
    for r, s in zip(x, y):
        for k in r:
            u, v = r[k], s[k]
            if isinstance(u, float) or isinstance(v, float):
                if not math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-9):
                    return f"{k}: {u} against {v} in {r}"
            elif u != v:
                return f"{k}: {u} against {v}"
    return None
print(f"== {days}-day double-groupby, {runs} runs each after one warm-up, medians in ms")
print("| query | rows | raw, JSON | roll-up, JSON | raw, Arrow | roll-up, Arrow | raw / roll-up (Arrow) |")
print("|---|---|---|---|---|---|---|")
for n, name in [(1, "double-groupby-1"), (5, "double-groupby-5"), (10, "double-groupby-all")]:
    x, y = json.loads(sql(raw(n))), json.loads(sql(rolled(n)))
    diff = same(x, y)
    if diff:
        sys.exit(f"{name}: the roll-up's answer differs from the raw rows': {diff}")
    med = {}
    for label, q in [("raw", raw(n)), ("rollup", rolled(n))]:
        for fmt in ["json", "arrow"]:
            sql(q, fmt)
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                sql(q, fmt)
                times.append((time.perf_counter() - t) * 1000)
            med[(label, fmt)] = statistics.median(times)
    print(f"| {name} | {len(x)} | {med[('raw', 'json')]:.1f} | {med[('rollup', 'json')]:.1f} | "
          f"{med[('raw', 'arrow')]:.1f} | {med[('rollup', 'arrow')]:.1f} | "
          f"{med[('raw', 'arrow')] / med[('rollup', 'arrow')]:.0f}x |")
PY
echo "bucket after the roll-up: $(pushed && bucket "$VALUES")"
kill -TERM "$PID"; wait "$PID" || true
