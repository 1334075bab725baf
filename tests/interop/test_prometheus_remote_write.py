"""Interop: the real Prometheus server (Debian package) scrapes a real
node_exporter and itself, and pushes with remote_write to Tocsin. After a
while, the samples Prometheus holds for a set of series (its own HTTP API,
raw samples of a range selector) must be exactly the rows Tocsin holds for
them: same series, same millisecond timestamps, same float64 values. The
same Prometheus sends its alerts to Tocsin as to an Alertmanager
(`alerting: alertmanagers:`): they show in Alertmanager's API, and Tocsin
escalates them, to a webhook and then, unacknowledged, by email (aiosmtpd)."""

import json
import os
import subprocess
import sys
import threading
import time
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
        tocsin_rules = os.path.join(tmp, "tocsin-rules.yml")
        with open(tocsin_rules, "w") as f:
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
        procs.append(subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{node_port}"],
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
rule_files: ["{rules}"]
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
        # Prometheus' own account: nothing it sent was refused.
        failed = get_json(f"http://{prom}/api/v1/query?query=sum(prometheus_remote_storage_samples_failed_total)")
        sent = get_json(f"http://{prom}/api/v1/query?query=sum(prometheus_remote_storage_samples_total)")
        assert float(failed["data"]["result"][0]["value"][1]) == 0, failed
        assert float(sent["data"]["result"][0]["value"][1]) > 1000, sent
        series = sql(http, "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public'")
        print(f"ok: Prometheus remote_write -> Tocsin, {series[0]['n']} metric tables, "
              f"{len(METRICS)} metrics compared sample by sample over {window} s; "
              "and with `authorization` to a server with --auth; its alerts reach Tocsin's Alertmanager API and are "
              "escalated to a webhook, then by email")
    smtp.stop()
    hook.shutdown()


if __name__ == "__main__":
    main()
