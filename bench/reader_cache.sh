#!/usr/bin/env bash
# Readers with a bounded cache of segment files (issue 17): DAYS days of
# the TSBS cpu-only data at 100 hosts into a writer whose copy goes to an
# S3 bucket (moto on loopback), compacted to one segment a day; then two
# readers of that copy: one that fetches the whole copy
# (cache_mb = 0) and one whose cache holds fewer MiB than the copy
# (CACHE_MB). Reports each reader's start (to listening), the bytes on its
# disk, and per query type the first run (files not on disk) and the
# median of RUNS runs after it, answers compared with the writer's.
#
#   bash bench/reader_cache.sh          # needs: pip install 'moto[server]' boto3
#   DAYS=7 CACHE_MB=16 RUNS=20 bash bench/reader_cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DAYS=${DAYS:-7}
RUNS=${RUNS:-20}
CACHE_MB=${CACHE_MB:-16}
machine
moto_bucket readers
URL=s3://readers/tsbs
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
disk() { du -sb "$WORK/$1/segments" "$WORK/$1/packs" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

cat > "$WORK/writer.toml" <<TOML
[storage]
object_store_interval = "1s"
TOML
serve writer --object-store "$URL" --config "$WORK/writer.toml"
W=$HTTP
HOURS=$((DAYS * 24))
echo "== writer: $DAYS days, 100 hosts, $((100 * HOURS * 360 * 10)) values"
"$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$W" --hours "$HOURS" --skip-queries 2>&1 \
  | grep -v '^  ingest ' | sed 's/^/  /'
curl -s -XPOST "http://$W/api/v1/admin/persist" > /dev/null
curl -s -XPOST "http://$W/api/v1/admin/compact?full=true" > /dev/null
before=$(metric "$W" tocsin_object_store_pushes_total)
for _ in $(seq 600); do
  [ "$(metric "$W" tocsin_object_store_pushes_total)" != "$before" ] && break
  sleep 0.5
done
echo "writer's segment files: $(disk writer) bytes"

reader() {
  local name=$1 mb=$2
  printf '[storage]\nobject_store_interval = "1s"\ncache_mb = %s\n' "$mb" > "$WORK/$name.toml"
  local t; t=$(now)
  serve "$name" --object-store "$URL" --role reader --config "$WORK/$name.toml"
  echo "$name (cache_mb = $mb): listening $(since "$t") s after its start, $(disk "$name") bytes of segment files on its disk"
}
reader whole 0
R_WHOLE=$HTTP
reader cached "$CACHE_MB"
R_CACHED=$HTTP

python3 - "$W" "$R_WHOLE" "$R_CACHED" "$RUNS" "$DAYS" <<'PY'
import datetime, json, statistics, sys, time, http.client
writer, whole, cached, runs, days = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
start = datetime.datetime(2016, 1, 1)
def span(d0, d1):
    return tuple((start + datetime.timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ") for d in (d0, d1))
def sql(host, q):
    conn = http.client.HTTPConnection(host)
    conn.request("POST", "/api/v1/sql", json.dumps({"sql": q}), {"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{host}: {r.status}: {body[:300]!r} for {q}")
    return json.loads(body)
def hourly(d0, d1):
    a, b = span(d0, d1)
    return (f"SELECT time_bucket(INTERVAL '1 hour', ts) AS hour, hostname, max(usage_user) AS m FROM cpu "
            f"WHERE ts >= '{a}' AND ts < '{b}' GROUP BY hour, hostname ORDER BY hour, hostname")
def one_host(d0, d1):
    a, b = span(d0, d1)
    return (f"SELECT time_bucket(INTERVAL '1 minute', ts) AS minute, max(usage_user) AS m FROM cpu "
            f"WHERE hostname = 'host_7' AND ts >= '{a}' AND ts < '{b}' GROUP BY minute ORDER BY minute")
queries = [("one host, 1 day (the last)", one_host(days - 1, days)),
           ("hourly max, 1 day (the last)", hourly(days - 1, days)),
           (f"hourly max, all {days} days", hourly(0, days))]
print(f"== medians of {runs} runs after the first, in ms; answers compared with the writer's")
print("| query | reader | first run | median after |")
print("|---|---|---|---|")
for label, q in queries:
    want = sql(writer, q)
    for name, host in [("whole copy", whole), ("cache", cached)]:
        t = time.perf_counter()
        got = sql(host, q)
        first = (time.perf_counter() - t) * 1000
        if got != want:
            sys.exit(f"{label} on the {name} reader: {len(got)} rows differ from the writer's {len(want)}")
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            sql(host, q)
            times.append((time.perf_counter() - t) * 1000)
        print(f"| {label} | {name} | {first:.1f} | {statistics.median(times):.1f} |")
PY
sleep 2
echo "cache reader: $(disk cached) bytes of segment files on its disk (bound $((CACHE_MB << 20)));" \
  "fetches $(metric "$R_CACHED" tocsin_segment_cache_fetches_total), evictions $(metric "$R_CACHED" tocsin_segment_cache_evictions_total)," \
  "hits $(metric "$R_CACHED" tocsin_segment_cache_hits_total)"
echo "whole-copy reader: $(disk whole) bytes of segment files on its disk"
