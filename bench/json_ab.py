"""JSON answers of two servers on the same data, interleaved (issue 14):
`python3 bench/json_ab.py OLD_HTTP NEW_HTTP RUNS`. Each statement's answers
are compared (as JSON values) before timing; medians in ms, and the new
server's Arrow answer for reference. Load both data directories alike
first (e.g. `tocsin-bench --hours 24 --skip-queries`, persist, copy the
directory)."""
import http.client, json, statistics, sys, time
A, B, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
conns = {h: http.client.HTTPConnection(h) for h in (A, B)}
def run(h, q, fmt):
    c = conns[h]
    t = time.perf_counter()
    c.request("POST", "/api/v1/sql", json.dumps({"sql": q, "format": fmt}), {"content-type": "application/json"})
    r = c.getresponse(); body = r.read()
    dt = (time.perf_counter() - t) * 1000
    if r.status != 200: sys.exit(f"{h} {r.status} {body[:200]}")
    return dt, body
qs = [
 ("72,000 rows x 12 columns (2 h of all hosts, SELECT *)", "SELECT * FROM cpu WHERE ts >= '2016-01-01T00:00:00Z' AND ts < '2016-01-01T02:00:00Z' ORDER BY ts, hostname"),
 ("high-cpu-all (rows with usage_user > 90, all day)", "SELECT * FROM cpu WHERE usage_user > 90 AND ts >= '2016-01-01T00:00:00Z' AND ts < '2016-01-02T00:00:00Z' ORDER BY ts, hostname"),
 ("2,400 rows (hourly avg per host)", "SELECT time_bucket(INTERVAL '1 hour', ts) AS hour, hostname, avg(usage_user) AS u, avg(usage_system) AS s FROM cpu GROUP BY hour, hostname ORDER BY hour, hostname"),
]
print("| answer | before (ms) | after (ms) | ratio | rows |")
print("|---|---|---|---|---|")
for label, q in qs:
    for fmt in ["json"]:
        a0 = json.loads(run(A, q, fmt)[1]); b0 = json.loads(run(B, q, fmt)[1])
        if a0 != b0: sys.exit(f"answers differ for {label}")
        ta, tb = [], []
        for i in range(runs):
            for h, acc in ((A, ta), (B, tb)) if i % 2 == 0 else ((B, tb), (A, ta)):
                acc.append(run(h, q, fmt)[0])
        ma, mb = statistics.median(ta), statistics.median(tb)
        print(f"| {label} | {ma:.1f} | {mb:.1f} | {mb/ma:.2f} | {len(a0)} |")
    ta = [run(B, q, "arrow")[0] for _ in range(runs)]
    print(f"| {label}, Arrow answer (after) | | {statistics.median(ta):.1f} | | |")
