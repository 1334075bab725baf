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
source bench/lib.sh
DAYS=${DAYS:-30}
RUNS=${RUNS:-20}
machine
moto_bucket scale
URL=s3://scale/tsbs
# Every server of this run uses one data directory, and the copy in the bucket.
export DATA=data
start() { local name=$1; shift; serve "$name" --object-store "$URL" "$@"; }
metric() { curl -s "http://$HTTP/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }
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
# The files the manifest lists (replaced ones wait out `grace` on disk):
# count, bytes, bytes per value.
listed() {
  python3 - "$WORK/data" "$1" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
files = {}
for tables in m["databases"].values():
    for t in tables.values():
        for s in t["segments"]:
            files[s["path"]] = s["pack"]["file_bytes"] if s.get("pack") else s["bytes"]
size = sum(files.values())
print(f"{len(files)} files, {size} bytes, {size / float(sys.argv[2]):.3f} bytes/value")
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
echo "before compaction: $(listed "$VALUES")"

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
echo "after compaction: $(listed "$VALUES")"
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
import datetime, json, math, statistics, sys, time, http.client
host, runs, days = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fields = ["usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait",
          "usage_irq", "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice"]
start = datetime.datetime(2016, 1, 1)
a, b = (t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in (start, start + datetime.timedelta(days=days)))
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
def direct(n):
    # The buckets' own means: right when the query's grouping is the roll-up's (hour and series).
    cols = ", ".join(f"{f}_avg AS mean_{f}" for f in fields[:n])
    return f"SELECT ts AS hour, hostname, {cols} FROM cpu_1h WHERE ts >= '{a}' AND ts < '{b}' ORDER BY hour, hostname"
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
def median_ms(q, fmt):
    sql(q, fmt)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sql(q, fmt)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
print(f"== {days}-day double-groupby, {runs} runs each after one warm-up, medians in ms")
print("| query | read from | rows | JSON | Arrow | raw / this (Arrow) |")
print("|---|---|---|---|---|---|")
for n, name in [(1, "double-groupby-1"), (5, "double-groupby-5"), (10, "double-groupby-all")]:
    want = json.loads(sql(raw(n)))
    raw_arrow = None
    for label, q in [("raw rows", raw(n)), ("roll-up, weighted mean", rolled(n)), ("roll-up, bucket means", direct(n))]:
        diff = same(want, json.loads(sql(q)))
        if diff:
            sys.exit(f"{name}, {label}: the answer differs from the raw rows': {diff}")
        j, w = median_ms(q, "json"), median_ms(q, "arrow")
        raw_arrow = raw_arrow or w
        print(f"| {name} | {label} | {len(want)} | {j:.1f} | {w:.1f} | {raw_arrow / w:.0f}x |")
PY
echo "bucket after the roll-up: $(pushed && bucket "$VALUES")"
kill -TERM "$PID"; wait "$PID" || true
