"""Interop: the real Prometheus server (Debian package) scrapes a real
node_exporter and itself, and pushes with remote_write to Tocsin. After a
while, the samples Prometheus holds for a set of series (its own HTTP API,
raw samples of a range selector) must be exactly the rows Tocsin holds for
them: same series, same millisecond timestamps, same float64 values; and
108 PromQL expressions must give the same answers from both query APIs
(instant and range), and promtool must query Tocsin. The
same Prometheus sends its alerts to Tocsin as to an Alertmanager
(`alerting: alertmanagers:`): they show in Alertmanager's API, and Tocsin
escalates them, to a webhook and then, unacknowledged, by email (aiosmtpd)."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

sys.path.insert(0, os.path.dirname(__file__))
from peers import (create_token, free_port, get_json, scratch, sql, start_tocsin,  # noqa: E402
                   start_tocsin_with_auth, wait_for)

# (metric, a label that tells the series of one job apart)
METRICS = ["up", "scrape_duration_seconds", "scrape_samples_scraped", "node_load1",
           "node_memory_MemAvailable_bytes", "prometheus_tsdb_head_series"]


def prom_samples(prom, metric, at, window_s):
    """{(frozenset(labels without __name__)): {ts_ms: value}} from Prometheus."""
    q = urllib.parse.urlencode({"query": f"{metric}[{window_s}s]", "time": f"{at:.3f}"})
    r = get_json(f"http://{prom}/api/v1/query?{q}")
    assert r["status"] == "success", r
    out = {}
    for s in r["data"]["result"]:
        labels = frozenset((k, v) for k, v in s["metric"].items() if k != "__name__")
        out[labels] = {round(float(t) * 1000): float(v) for t, v in s["values"]}
    return out


def tocsin_samples(http, metric, lo_ms, hi_ms):
    rows = sql(http, f"SELECT CAST(ts AS BIGINT) / 1000000 AS ms, * FROM \"{metric}\" WHERE ts > "
                     f"to_timestamp_millis({lo_ms}) AND ts <= to_timestamp_millis({hi_ms})")
    out = {}
    for r in rows:
        ms = r.pop("ms")
        r.pop("ts")
        value = r.pop("value")
        labels = frozenset((k, v) for k, v in r.items() if v is not None)
        out.setdefault(labels, {})[ms] = value
    return out


# PromQL asked of Prometheus and of Tocsin, which hold the same samples
# (remote_write): the answers must agree (same series, values within 1e-6
# relative). Expressions over the window both hold.
PROMQL = [
    "up",
    'up{job="node"}',
    'up{job=~"no.*"}',
    'up{job!="node"}',
    "node_load1",
    "node_load1 offset 10s",
    "rate(node_cpu_seconds_total[10s])",
    'rate(node_cpu_seconds_total{mode="idle"}[10s])',
    "irate(node_cpu_seconds_total[10s])",
    "increase(prometheus_http_requests_total[10s])",
    "delta(node_memory_MemAvailable_bytes[10s])",
    "idelta(node_memory_MemAvailable_bytes[10s])",
    "sum(rate(node_cpu_seconds_total[10s]))",
    "sum by (mode) (rate(node_cpu_seconds_total[10s]))",
    "sum without (cpu) (rate(node_cpu_seconds_total[10s]))",
    'avg by (cpu) (rate(node_cpu_seconds_total{mode!="idle"}[10s]))',
    "max(node_load1)",
    "min by (job) (up)",
    "count(node_cpu_seconds_total)",
    "count by (mode) (node_cpu_seconds_total)",
    "stddev(rate(node_cpu_seconds_total[10s]))",
    "stdvar by (mode) (rate(node_cpu_seconds_total[10s]))",
    "topk(3, node_cpu_seconds_total)",
    "bottomk(2, node_memory_MemAvailable_bytes)",
    "quantile(0.9, rate(node_cpu_seconds_total[10s]))",
    'count_values("v", up)',
    "group by (job) (up)",
    "avg_over_time(node_load1[10s])",
    "sum_over_time(up[10s])",
    "min_over_time(node_memory_MemAvailable_bytes[10s])",
    "max_over_time(node_memory_MemAvailable_bytes[10s])",
    "count_over_time(up[10s])",
    "last_over_time(node_load1[10s])",
    "stddev_over_time(node_memory_MemAvailable_bytes[10s])",
    "quantile_over_time(0.5, scrape_duration_seconds[10s])",
    "changes(node_memory_MemAvailable_bytes[10s])",
    "resets(prometheus_http_requests_total[10s])",
    "deriv(node_memory_MemAvailable_bytes[10s])",
    "predict_linear(node_memory_MemAvailable_bytes[10s], 3600)",
    "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
    "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes * 100 > 1",
    "(1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes) * 100",
    "node_load1 > 0",
    "node_load1 >= bool 0",
    "up == 1",
    "up + 1",
    "2 * up",
    "-node_load1",
    "up * on(instance, job) group_left() node_load1",
    "rate(node_cpu_seconds_total[10s]) / on(instance) group_left() count by (instance) (node_cpu_seconds_total)",
    'up and on(job) up{job="node"}',
    'up or node_load1',
    'up unless up{job="node"}',
    "abs(-node_load1)",
    "ceil(node_load1)",
    "floor(node_load1)",
    "round(node_load1, 0.1)",
    "sqrt(node_load1)",
    "ln(node_memory_MemTotal_bytes)",
    "log2(node_memory_MemTotal_bytes)",
    "log10(node_memory_MemTotal_bytes)",
    "exp(up)",
    "clamp(node_load1, 0.1, 0.5)",
    "clamp_min(node_load1, 0.5)",
    "clamp_max(node_load1, 0.5)",
    "sgn(node_load1)",
    "time()",
    "vector(1)",
    "scalar(sum(up))",
    "sum(up) + scalar(count(up))",
    "timestamp(up)",
    "sort(node_cpu_seconds_total)",
    "sort_desc(node_memory_MemAvailable_bytes)",
    "absent(nonexistent_metric)",
    'absent(up{job="node"})',
    'label_replace(up, "host", "$1", "instance", "(.*):.*")',
    "histogram_quantile(0.9, rate(prometheus_http_request_duration_seconds_bucket[10s]))",
    "histogram_quantile(0.5, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[10s])))",
    "1 + 2 * 3",
    "up @ {at}",
    "sum(up) by (job) / 2",
    'label_join(up, "both", "/", "job", "instance")',
    "absent_over_time(nonexistent_metric[10s])",
    "absent_over_time(up[10s])",
    "rate(node_cpu_seconds_total[10s] offset 5s)",
    "sum by (mode) (increase(node_cpu_seconds_total[15s]))",
    "max without (cpu, mode) (rate(node_cpu_seconds_total[10s]))",
    "avg(avg_over_time(node_load1[10s]))",
    "sum(rate(node_cpu_seconds_total[10s])) by (cpu) > bool 0",
    "node_memory_MemAvailable_bytes > bool node_memory_MemFree_bytes",
    "node_memory_MemAvailable_bytes - node_memory_MemFree_bytes",
    "node_memory_MemAvailable_bytes % 1000",
    "node_load1 ^ 2",
    "node_load1 != 0",
    "up <= 1",
    "up < 2",
    "count(up == 1)",
    "sum(up) == 2",
    "count by (job) (up) * on(job) group_right() up",
    "1 - up",
    "scrape_duration_seconds * 1000",
    "max(scrape_duration_seconds) by (job)",
    "min_over_time(up[15s]) == 0",
    "up @ start()",
    "up @ end()",
    "rate(prometheus_http_requests_total[15s]) > 0",
    "sum(rate(prometheus_http_requests_total[15s])) by (handler)",
    "ceil(rate(node_cpu_seconds_total[10s]) * 100)",
    # Subqueries, selectors without a metric name, date and trigonometric
    # functions, holt_winters.
    "max_over_time(rate(node_cpu_seconds_total[10s])[20s:5s])",
    "avg_over_time(node_load1[15s:3s])",
    "rate(sum by (mode) (node_cpu_seconds_total)[20s:2s])",
    "deriv(node_memory_MemAvailable_bytes[20s:1s])",
    "min_over_time((up == 1)[10s:2s] offset 5s)",
    "count_over_time(vector(1)[20s:4s])",
    "max_over_time(sum(up)[10s:1s] @ end())",
    "sum_over_time(max_over_time(node_load1[4s:1s])[12s:3s])",
    "quantile_over_time(0.5, node_load1[10s:2s])",
    "predict_linear(node_memory_MemAvailable_bytes[20s:2s], 60)",
    '{job="node", __name__=~"node_load.*"}',
    '{__name__="up"}',
    'count by (__name__) ({__name__=~"node_memory_Mem.*_bytes"})',
    'sum(rate({__name__=~"node_cpu_seconds_total|prometheus_http_requests_total"}[10s]))',
    "hour()", "minute()", "month()", "year()", "day_of_month()", "day_of_week()", "day_of_year()",
    "days_in_month()",
    "hour(timestamp(up))",
    "minute(node_boot_time_seconds)",
    "sin(node_load1)", "cos(node_load1)", "tan(node_load1)", "atan(node_load1)", "sinh(node_load1)",
    "asin(clamp(node_load1, -1, 1))", "acos(clamp(node_load1, -1, 1))", "tanh(node_load1)",
    "asinh(node_load1)", "acosh(node_load1 + 1)", "atanh(clamp(node_load1, -0.9, 0.9))",
    "deg(node_load1)", "rad(node_load1)", "pi()", "cosh(up)",
    "holt_winters(node_memory_MemAvailable_bytes[20s], 0.5, 0.5)",
    "holt_winters(node_load1[15s], 0.3, 0.7)",
]


def close_value(a, b):
    import math
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    # Relative 1e-6; absolute 1e-12 for values that are 0 in one engine
    # and a rounding residue in the other (a variance of equal values).
    return a == b or abs(a - b) <= max(1e-6 * max(abs(a), abs(b)), 1e-12)


def promql_answer(base, path, params):
    try:
        r = get_json(f"http://{base}{path}?" + urllib.parse.urlencode(params))
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{base}{path} {params['query']}: HTTP {e.code} {e.read()[:500]!r}") from None
    assert r["status"] == "success", (params, r)
    d = r["data"]
    if d["resultType"] in ("scalar", "string"):
        return d["resultType"], [((), [d["result"]])]
    key = "value" if d["resultType"] == "vector" else "values"
    rows = []
    for s in d["result"]:
        pts = [s[key]] if key == "value" else s[key]
        rows.append((tuple(sorted(s["metric"].items())), pts))
    # sort() orders its answer by value: the values must come in the same
    # order; series of equal values are in no order.
    if params["query"].startswith("sort"):
        return d["resultType"], ([float(p[0][1]) for _, p in rows], sorted(rows))
    rows.sort()
    return d["resultType"], rows


def same_answer(a, b):
    if isinstance(a[1], tuple):  # sort(): the order of values, then the rows
        return a[0] == b[0] and a[1][0] == b[1][0] and same_answer((a[0], a[1][1]), (b[0], b[1][1]))
    if a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    for (la, pa), (lb, pb) in zip(a[1], b[1]):
        if la != lb or len(pa) != len(pb):
            return False
        for (ta, va), (tb, vb) in zip(pa, pb):
            if abs(float(ta) - float(tb)) > 1e-6 or not close_value(va, vb):
                return False
    return True


def promql_side_by_side(prom, http, at):
    """Every expression as an instant query at `at` and as a range query over
    the 20 s before it, in both; returns how many agreed."""
    for expr in PROMQL:
        expr = expr.replace("{at}", f"{at:.3f}")
        for path, params in (("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}),
                             ("/api/v1/query_range", {"query": expr, "start": f"{at - 20:.3f}", "end": f"{at:.3f}",
                                                      "step": "5"})):
            theirs = promql_answer(prom, path, params)
            ours = promql_answer(http, path, params)
            assert same_answer(theirs, ours), f"{path} {expr}\n Prometheus: {theirs}\n Tocsin:     {ours}"
    return len(PROMQL)


# A Prometheus rule file as rule packs write them: `expr`, `for`, a
# `severity` label, annotations with `$labels`, `$value` and Go template
# functions.
PACK = """
groups:
  - name: pack
    interval: 1s
    rules:
      - alert: PackTargetUp
        expr: up == 1
        labels: {severity: info}
        annotations:
          summary: "{{ $labels.job }} at {{ $labels.instance }} is up"
      - alert: PackRoomHot
        expr: tocsin_room_temperature_celsius > 30
        for: 2s
        labels: {severity: critical, team: facilities}
        annotations:
          summary: "Room {{ $labels.room }} is at {{ $value | humanize }} degrees"
          detail: "{{ printf \\"%.1f\\" $value }} ({{ humanizePercentage 0.5 }} of {{ 2048 | humanize1024 }}, for {{ humanizeDuration 3725 }})"
      - alert: PackCpuCount
        expr: count without (cpu, mode) (node_cpu_seconds_total{mode="idle"}) >= 1
        annotations:
          summary: "{{ $labels.instance | toUpper }} has {{ $value }} CPUs"
      - alert: PackScrapedSeries
        expr: sum by (job) (scrape_series_added) >= 0
        labels: {severity: warning}
      - alert: PackNothing
        expr: up == 2
      - alert: PackScalar
        expr: vector(1)
        labels: {severity: info}
      - record: pack:up:count
        expr: count by (job) (up)
      - alert: PackJobCounted
        expr: pack:up:count >= 1
        labels: {severity: info}
        annotations: {summary: "{{ $labels.job }}: {{ $value }} target(s)"}
"""


def firing_pack(alerts, default_severity=None):
    """(labels, annotations) of the firing alerts of PACK, comparable. Every
    Tocsin alert has a severity: `critical` where the rule names none
    (PackCpuCount), which Prometheus leaves without."""
    out = []
    for a in alerts:
        if not a["labels"]["alertname"].startswith("Pack") or a["state"] != "firing":
            continue
        labels = dict(a["labels"])
        if default_severity and labels["alertname"] == "PackCpuCount":
            assert labels.pop("severity") == default_severity, a
        out.append((json.dumps(labels, sort_keys=True), json.dumps(a.get("annotations", {}), sort_keys=True)))
    return sorted(out)


def same_alerts(prom, http):
    theirs = firing_pack(get_json(f"http://{prom}/api/v1/alerts")["data"]["alerts"])
    ours = firing_pack([a for a in get_json(f"http://{http}/api/v1/alerts?state=firing")["alerts"]
                        if a.get("group") == "pack"], default_severity="critical")
    names = {json.loads(labels)["alertname"] for labels, _ in theirs}
    if names != {"PackTargetUp", "PackRoomHot", "PackCpuCount", "PackScrapedSeries", "PackScalar", "PackJobCounted"}:
        return None
    if theirs != ours:
        print("    Prometheus:", theirs, "\n    Tocsin:", ours)
        return None
    return len(theirs)


HOOKED = []
MAILED = []


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        HOOKED.append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


class Mailbox:
    async def handle_DATA(self, server, session, envelope):
        MAILED.append(envelope.content)
        return "250 OK"


def main():
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    smtp_port = free_port()
    smtp = Controller(Mailbox(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    with scratch("tocsin-prom-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog, open(os.path.join(tmp, "peers.log"), "w") as plog:
        # Prometheus' alerts are escalated by Tocsin: step 1 to a webhook,
        # step 2 (after 2 s, unacknowledged) by email.
        # Tocsin's rules are a directory: its routing, and the Prometheus
        # rule file (PACK) that Prometheus evaluates too.
        tocsin_rules = os.path.join(tmp, "tocsin-rules")
        os.mkdir(tocsin_rules)
        pack = os.path.join(tocsin_rules, "pack.yml")
        with open(pack, "w") as f:
            f.write(PACK)
        textfiles = os.path.join(tmp, "textfiles")
        os.mkdir(textfiles)
        with open(os.path.join(textfiles, "rooms.prom"), "w") as f:
            f.write('tocsin_room_temperature_celsius{room="a"} 35.25\n'
                    'tocsin_room_temperature_celsius{room="b"} 21\n'
                    'tocsin_room_temperature_celsius{room="c"} 1234567\n')
        with open(os.path.join(tocsin_rules, "route.yml"), "w") as f:
            f.write(f"""
route:
  escalation: page
  group_by: [alertname, instance]
  group_wait: 0s
  group_interval: 1s
escalations:
  - name: page
    steps:
      - {{ after: 0s, notify: [hook] }}
      - {{ after: 2s, notify: [mail] }}
receivers:
  - name: hook
    webhook: {{ url: "http://127.0.0.1:{hook.server_port}/page" }}
  - name: mail
    email: {{ to: [oncall@example.com], from: tocsin@example.com, smarthost: "127.0.0.1:{smtp_port}", tls: none }}
""")
        tocsin, _grpc, http = start_tocsin(os.path.join(tmp, "data"), tlog, ["--rules", tocsin_rules])
        procs.append(tocsin)
        # A second Tocsin with --auth, written to with prometheus.yml's
        # `authorization` (a writer token as the bearer credentials).
        authed, _g, authed_http, admin = start_tocsin_with_auth(os.path.join(tmp, "authed"), tlog)
        procs.append(authed)
        writer = create_token(authed_http, admin, "writer", "--description", "prometheus")
        node_port, prom_port = free_port(), free_port()
        procs.append(subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{node_port}",
                                       f"--collector.textfile.directory={textfiles}"],
                                      stdout=plog, stderr=plog))
        prom = f"127.0.0.1:{prom_port}"
        config = os.path.join(tmp, "prometheus.yml")
        rules = os.path.join(tmp, "prometheus-rules.yml")
        with open(rules, "w") as f:
            f.write("groups:\n  - name: t\n    rules:\n      - alert: NodeExporterUp\n        expr: up{job=\"node\"} == 1\n"
                    "        labels: {severity: warning}\n        annotations: {summary: \"node exporter answers\"}\n")
        with open(config, "w") as f:
            f.write(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}", "{pack}"]
alerting:
  alertmanagers:
    - api_version: v2
      static_configs: [{{targets: ["{http}"]}}]
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:{node_port}"]}}]
  - job_name: prometheus
    static_configs: [{{targets: ["{prom}"]}}]
remote_write:
  - url: http://{http}/api/v1/write
    queue_config: {{batch_send_deadline: 1s, max_samples_per_send: 2000}}
  - url: http://{authed_http}/api/v1/write
    authorization: {{credentials: "{writer}"}}
    queue_config: {{batch_send_deadline: 1s, max_samples_per_send: 2000}}
""")
        procs.append(subprocess.Popen(["prometheus", f"--config.file={config}",
                                       f"--storage.tsdb.path={os.path.join(tmp, 'prom')}",
                                       f"--web.listen-address={prom}"], stdout=plog, stderr=plog))
        wait_for("Prometheus to scrape both targets",
                 lambda: len(get_json(f"http://{prom}/api/v1/query?query=up")["data"]["result"]) == 2)
        wait_for("remote_write to reach Tocsin", lambda: sql(http, "SELECT count(*) AS n FROM up")[0]["n"] >= 4)
        wait_for("remote_write with a token to reach the server with --auth",
                 lambda: sql(authed_http, "SELECT count(*) AS n FROM up", admin)[0]["n"] >= 4)
        started = time.time()
        time.sleep(30)
        # Compare a window that ended a few seconds ago: everything in it
        # has been sent (batch_send_deadline 1 s).
        at = time.time() - 5
        window = int(at - started) - 1
        hi_ms = round(at * 1000)
        lo_ms = hi_ms - window * 1000
        # Wait until Tocsin holds everything of the window Prometheus holds.
        for metric in METRICS:
            theirs = prom_samples(prom, metric, at, window)
            assert theirs, f"Prometheus has no {metric}"
            ours = wait_for(f"{metric} in Tocsin",
                            lambda: (lambda o: o if o == theirs else None)(tocsin_samples(http, metric, lo_ms, hi_ms)),
                            deadline_s=20)
            n = sum(len(v) for v in ours.values())
            print(f"  {metric}: {len(ours)} series, {n} samples identical in both")
            assert n >= window // 2 * len(ours), f"{metric}: only {n} samples over {window} s"
        # PromQL, side by side, over the same window.
        n = wait_for("PromQL answers to agree", lambda: promql_side_by_side(prom, http, at), deadline_s=30)
        print(f"  PromQL: {n} expressions give the same instant and range answers in Prometheus and Tocsin")
        # promtool, Prometheus' own CLI, against Tocsin.
        out = subprocess.run(["promtool", "query", "instant", f"http://{http}",
                              "sum by (mode) (rate(node_cpu_seconds_total[10s]))"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and '{mode="idle"} =>' in out.stdout, (out.stdout, out.stderr)
        out = subprocess.run(["promtool", "query", "range", f"--start={at - 20:.3f}", f"--end={at:.3f}",
                              "--step=5s", f"http://{http}", "node_load1"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "node_load1{" in out.stdout and " @[" in out.stdout, (out.stdout, out.stderr)
        # Prometheus' alert, sent to Tocsin as to an Alertmanager.
        alerts = wait_for("Prometheus' alert in Tocsin's Alertmanager API",
                          lambda: [a for a in get_json(f"http://{http}/api/v2/alerts")
                                   if a["labels"].get("alertname") == "NodeExporterUp"])
        assert alerts[0]["labels"]["job"] == "node" and alerts[0]["annotations"]["summary"] == "node exporter answers", alerts
        assert alerts[0]["status"]["state"] == "active", alerts
        wait_for("Prometheus' alert escalated to the webhook (step 1)",
                 lambda: any(p["alerts"][0]["labels"].get("alertname") == "NodeExporterUp"
                             and p["tocsin"].get("step") == 1 for p in HOOKED))
        wait_for("and, unacknowledged, by email (step 2)",
                 lambda: any(b"NodeExporterUp" in m for m in MAILED), deadline_s=30)
        # The same Prometheus rule file, evaluated by both.
        n = wait_for("the rule file's alerts to agree", lambda: same_alerts(prom, http), deadline_s=40)
        print(f"  rules: the same Prometheus rule file fires the same {n} alerts (labels and annotations) in both")
        # Prometheus' own account: nothing it sent was refused.
        failed = get_json(f"http://{prom}/api/v1/query?query=sum(prometheus_remote_storage_samples_failed_total)")
        sent = get_json(f"http://{prom}/api/v1/query?query=sum(prometheus_remote_storage_samples_total)")
        assert float(failed["data"]["result"][0]["value"][1]) == 0, failed
        assert float(sent["data"]["result"][0]["value"][1]) > 1000, sent
        series = sql(http, "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'")
        print(f"ok: Prometheus remote_write -> Tocsin, {series[0]['n']} metric tables, "
              f"{len(METRICS)} metrics compared sample by sample over {window} s; {len(PROMQL)} PromQL expressions "
              "agree, promtool queries Tocsin; "
              "and with `authorization` to a server with --auth; its alerts reach Tocsin's Alertmanager API and are "
              "escalated to a webhook, then by email")
    smtp.stop()
    hook.shutdown()


if __name__ == "__main__":
    main()
