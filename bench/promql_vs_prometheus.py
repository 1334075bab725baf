"""PromQL speed, side by side: the same range queries asked of Prometheus
and of Tocsin holding the same samples (Prometheus remote_writes to Tocsin),
alternating engines, median of RUNS per expression and engine.

    python3 bench/promql_vs_prometheus.py PROM_ADDR TOCSIN_ADDR [RUNS] [WINDOW_S] [STEP_S]

Prints a markdown table (milliseconds) for docs/benchmarks.md; the answers
are checked to agree (same series count) on every run."""

import http.client
import json
import statistics
import sys
import time
import urllib.parse

EXPRS = [
    "node_load1",
    "rate(node_cpu_seconds_total[1m])",
    "sum by (mode) (rate(node_cpu_seconds_total[1m]))",
    "avg_over_time(node_memory_MemAvailable_bytes[5m])",
    "(1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes) * 100",
    "topk(5, rate(prometheus_http_requests_total[1m]))",
    "histogram_quantile(0.9, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[1m])))",
    "count by (job) (up)",
]


def ask(addr, path, params):
    host, port = addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    t0 = time.perf_counter()
    c.request("GET", path + "?" + urllib.parse.urlencode(params))
    r = c.getresponse()
    body = r.read()
    ms = (time.perf_counter() - t0) * 1000
    c.close()
    d = json.loads(body)
    assert d["status"] == "success", (addr, params, d)
    return ms, len(d["data"]["result"])


def main():
    prom, tocsin = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    window = int(sys.argv[4]) if len(sys.argv) > 4 else 600
    step = sys.argv[5] if len(sys.argv) > 5 else "15"
    end = time.time() - 10
    params = {"start": f"{end - window:.3f}", "end": f"{end:.3f}", "step": step}
    print(f"| expression (range {window} s, step {step} s) | Prometheus ms | Tocsin ms | series |")
    print("|---|---|---|---|")
    ratios = []
    for expr in EXPRS:
        p = dict(params, query=expr)
        times = {prom: [], tocsin: []}
        counts = set()
        for _ in range(runs):
            for addr in (prom, tocsin):
                ms, n = ask(addr, "/api/v1/query_range", p)
                times[addr].append(ms)
                counts.add((addr, n))
        n = {c for a, c in counts}
        assert len(n) == 1, (expr, counts)
        a, b = statistics.median(times[prom]), statistics.median(times[tocsin])
        ratios.append(b / a)
        print(f"| `{expr}` | {a:.1f} | {b:.1f} | {n.pop()} |")
    print(f"\nmedian Tocsin/Prometheus ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
