"""Per-phase start cost of one SQL statement: runs it RUNS times over HTTP
(keep-alive, after 20 warm-up runs) and divides the increase of
tocsin_query_phase_seconds_total{phase} by the statements run.

    python3 bench/phases.py 127.0.0.1:4318 300 "SELECT 1"
"""
import http.client, json, sys, time, statistics, urllib.request
addr = sys.argv[1]; runs = int(sys.argv[2]); sql = sys.argv[3]
def metrics():
    t = urllib.request.urlopen(f'http://{addr}/metrics').read().decode()
    out = {}
    for l in t.splitlines():
        if l.startswith('tocsin_query_phase_seconds_total{') or l.startswith('tocsin_queries_total '):
            k, v = l.rsplit(' ', 1); out[k] = float(v)
    return out
h, p = addr.split(':'); c = http.client.HTTPConnection(h, int(p))
def run():
    c.request('POST', '/api/v1/sql', json.dumps({'sql': sql}), {'content-type': 'application/json'})
    r = c.getresponse(); b = r.read(); assert r.status == 200, b[:300]
for _ in range(20): run()
m0 = metrics(); ts = []
for _ in range(runs):
    t = time.perf_counter(); run(); ts.append((time.perf_counter() - t) * 1000)
m1 = metrics()
n = m1['tocsin_queries_total'] - m0['tocsin_queries_total']
print(f"median {statistics.median(ts):.2f} ms over {runs}; per statement:", {k.split('"')[1]: round((m1[k]-m0[k])/n*1000, 3) for k in m1 if 'phase' in k}, "ms")
