#!/usr/bin/env bash
# A writer whose segments live in the bucket (`segments = "object-store"`,
# issue 17): DAYS days of the TSBS cpu-only data at 100 hosts into a writer
# with its copy in an S3 bucket (moto on loopback) and a cache of CACHE_MB,
# compacted to one segment a day. Reports the bytes on its disk once the
# copy holds them; per query type the first run and the median of RUNS
# after it, answers compared with a reader of the same copy that holds it
# whole; then the writer stops and a server starts from the copy on an
# empty data directory, once with `segments = "local"` (it fetches every
# segment first) and once with `segments = "object-store"` (it fetches
# none): time to listening, bytes on its disk, and the same queries.
#
#   bash bench/writer_cache.sh          # needs: pip install 'moto[server]' boto3
#   DAYS=7 CACHE_MB=16 RUNS=20 bash bench/writer_cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DAYS=${DAYS:-7}
RUNS=${RUNS:-20}
CACHE_MB=${CACHE_MB:-16}
machine
moto_bucket writers
URL=s3://writers/tsbs
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
metric() { curl -s "http://$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
disk() { du -sb "$WORK/$1/segments" "$WORK/$1/packs" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
# Waits for the next push of the server at $1 to succeed.
pushed() {
  local before; before=$(metric "$1" tocsin_object_store_pushes_total)
  for _ in $(seq 600); do
    [ "$(metric "$1" tocsin_object_store_pushes_total)" != "$before" ] && return
    sleep 0.5
  done
  echo "no push within 5 minutes" >&2
  exit 1
}
conf() {
  printf '[storage]\nobject_store_interval = "1s"\nsegments = "%s"\ncache_mb = %s\n' "$2" "$CACHE_MB" > "$WORK/$1.toml"
}

conf first object-store
serve first --object-store "$URL" --config "$WORK/first.toml"
W=$HTTP
W_PID=$PID
HOURS=$((DAYS * 24))
echo "== writer (segments = \"object-store\", cache_mb = $CACHE_MB): $DAYS days, 100 hosts, $((100 * HOURS * 360 * 10)) values"
"$T/tocsin-bench" --grpc-addr "$GRPC" --http-addr "$W" --hours "$HOURS" --skip-queries 2>&1 \
  | grep -v '^  ingest ' | sed 's/^/  /'
curl -s -XPOST "http://$W/api/v1/admin/persist" > /dev/null
curl -s -XPOST "http://$W/api/v1/admin/compact?full=true" > /dev/null
pushed "$W"
pushed "$W"
echo "data: $(metric "$W" tocsin_segment_bytes) bytes of segment files in the manifest;" \
  "on the writer's disk: $(disk first) bytes (bound $((CACHE_MB << 20)))"

printf '[storage]\nobject_store_interval = "1s"\ncache_mb = 0\n' > "$WORK/whole.toml"
serve whole --object-store "$URL" --role reader --config "$WORK/whole.toml"
R=$HTTP

queries() {
  python3 - "$R" "$1" "$RUNS" "$DAYS" "$2" <<'PY'
import datetime, json, statistics, sys, time, http.client
ref, host, runs, days, label = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
start = datetime.datetime(2016, 1, 1)
def span(d0, d1):
    return tuple((start + datetime.timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ") for d in (d0, d1))
def sql(h, q):
    conn = http.client.HTTPConnection(h)
    conn.request("POST", "/api/v1/sql", json.dumps({"sql": q}), {"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{h}: {r.status}: {body[:300]!r} for {q}")
    return json.loads(body)
def hourly(d0, d1):
    a, b = span(d0, d1)
    return (f"SELECT time_bucket(INTERVAL '1 hour', ts) AS hour, hostname, max(usage_user) AS m FROM cpu "
            f"WHERE ts >= '{a}' AND ts < '{b}' GROUP BY hour, hostname ORDER BY hour, hostname")
def one_host(d0, d1):
    a, b = span(d0, d1)
    return (f"SELECT time_bucket(INTERVAL '1 minute', ts) AS minute, max(usage_user) AS m FROM cpu "
            f"WHERE hostname = 'host_7' AND ts >= '{a}' AND ts < '{b}' GROUP BY minute ORDER BY minute")
for name, q in [("one host, 1 day (the first)", one_host(0, 1)),
                ("hourly max, 1 day (the first)", hourly(0, 1)),
                (f"hourly max, all {days} days", hourly(0, days))]:
    want = sql(ref, q)
    t = time.perf_counter()
    got = sql(host, q)
    first = (time.perf_counter() - t) * 1000
    if got != want:
        sys.exit(f"{name} on {label}: {len(got)} rows differ from the whole-copy reader's {len(want)}")
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sql(host, q)
        times.append((time.perf_counter() - t) * 1000)
    print(f"| {label} | {name} | {first:.1f} | {statistics.median(times):.1f} |")
PY
}
echo "== medians of $RUNS runs after the first, in ms; answers compared with a reader holding the whole copy"
echo "| server | query | first run | median after |"
echo "|---|---|---|---|"
queries "$W" "writer"
sleep 2
echo "writer's disk after the queries: $(disk first) bytes; fetches $(metric "$W" tocsin_segment_cache_fetches_total)," \
  "evictions $(metric "$W" tocsin_segment_cache_evictions_total), hits $(metric "$W" tocsin_segment_cache_hits_total)"
kill -TERM "$W_PID"
wait "$W_PID" || true

# A new machine: the copy, an empty data directory.
for mode in local object-store; do
  name="from-${mode}"
  conf "$name" "$mode"
  t=$(now)
  serve "$name" --object-store "$URL" --config "$WORK/$name.toml"
  echo "start from the copy, segments = \"$mode\": listening $(since "$t") s after its start," \
    "$(disk "$name") bytes of segment files on its disk"
  queries "$HTTP" "segments = $mode"
  sleep 2
  echo "its disk after the queries: $(disk "$name") bytes"
  kill -TERM "$PID"
  wait "$PID" || true
done
