"""PromQL A/B: the same range queries asked of two Tocsin servers holding the
same samples (two builds, each on its own copy of one data directory),
requests interleaved so that the machine's noise falls on both alike.

    python3 bench/promql_ab.py ADDR_A ADDR_B START END [RUNS] [STEP_S]

START and END are Unix seconds (a fixed window: both servers answer over
the same rows). Keep-alive connections; the first answer of each server
to each expression is compared byte for byte (the script stops if they
differ); then RUNS timed pairs. Prints a markdown table of medians in ms."""

import http.client
import statistics
import sys
import time
import urllib.parse

from promql_vs_prometheus import EXPRS as SIDE_BY_SIDE

# The side-by-side bench's expressions, and a selector of many series.
EXPRS = SIDE_BY_SIDE + ["prometheus_http_request_duration_seconds_bucket"]


class Server:
    def __init__(self, addr):
        host, port = addr.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def ask(self, params):
        t0 = time.perf_counter()
        self.conn.request("GET", "/api/v1/query_range?" + urllib.parse.urlencode(params))
        r = self.conn.getresponse()
        body = r.read()
        ms = (time.perf_counter() - t0) * 1000
        assert r.status == 200, (r.status, body[:300])
        return ms, body


def main():
    a, b = Server(sys.argv[1]), Server(sys.argv[2])
    start, end = float(sys.argv[3]), float(sys.argv[4])
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    step = sys.argv[6] if len(sys.argv) > 6 else "15"
    print(f"| expression ({end - start:.0f} s, step {step} s) | A (ms) | B (ms) | B / A |")
    print("|---|---|---|---|")
    for expr in EXPRS:
        p = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        _, body_a = a.ask(p)
        _, body_b = b.ask(p)
        if body_a != body_b:
            sys.exit(f"answers differ for {expr}:\nA: {body_a[:400]}\nB: {body_b[:400]}")
        ta, tb = [], []
        for _ in range(runs):
            ta.append(a.ask(p)[0])
            tb.append(b.ask(p)[0])
        ma, mb = statistics.median(ta), statistics.median(tb)
        print(f"| `{expr}` | {ma:.2f} | {mb:.2f} | {mb / ma:.2f} |")


if __name__ == "__main__":
    main()
