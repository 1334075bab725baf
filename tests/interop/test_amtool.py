"""Interop: `amtool` (Debian's prometheus-alertmanager package), the
Alertmanager's own CLI, against Tocsin's Alertmanager v2 API: an alert added
with amtool is routed to a webhook; `alert query` lists it; a silence added
with amtool mutes it, is listed by `silence query`, and `silence expire`
ends it."""

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from peers import scratch, start_tocsin, wait_for  # noqa: E402

RECEIVED = []


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        RECEIVED.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def amtool(http, *args):
    out = subprocess.run(["amtool", f"--alertmanager.url=http://{http}", *args], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, f"amtool {' '.join(args)}: {out.stderr}"
    return out.stdout


def main():
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    with scratch("tocsin-amtool-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog:
        rules = os.path.join(tmp, "rules.yml")
        with open(rules, "w") as f:
            f.write(f"""
route:
  receiver: oncall
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 1s
receivers:
  - name: oncall
    webhook: {{ url: "http://127.0.0.1:{hook.server_port}/oncall" }}
""")
        proc, _grpc, http = start_tocsin(os.path.join(tmp, "data"), tlog, ["--rules", rules])
        procs.append(proc)
        amtool(http, "alert", "add", "DiskFull", "host=db-1", "severity=critical", "--annotation=summary=disk full")
        wait_for("amtool's alert at the webhook",
                 lambda: any(p["alerts"][0]["labels"].get("alertname") == "DiskFull" for p in RECEIVED))
        listed = json.loads(amtool(http, "alert", "query", "-o", "json", "alertname=DiskFull"))
        assert len(listed) == 1 and listed[0]["labels"]["host"] == "db-1", listed
        assert listed[0]["receivers"] == [{"name": "oncall"}], listed
        silence_id = amtool(http, "silence", "add", "host=db-1", "--comment=disk swap", "--duration=1h").strip()
        assert silence_id, "no silence id"
        wait_for("the alert silenced",
                 lambda: json.loads(amtool(http, "alert", "query", "-o", "json", "-s", "alertname=DiskFull"))[0]
                 ["status"]["state"] == "suppressed")
        silences = json.loads(amtool(http, "silence", "query", "-o", "json"))
        assert [s["id"] for s in silences] == [silence_id], silences
        amtool(http, "silence", "expire", silence_id)
        assert json.loads(amtool(http, "silence", "query", "-o", "json")) == [], "the silence is still active"
        expired = json.loads(amtool(http, "silence", "query", "-o", "json", "--expired"))
        assert [s["id"] for s in expired] == [silence_id], expired
        print("ok: amtool alert add/query and silence add/query/expire against Tocsin's Alertmanager API")
    hook.shutdown()


if __name__ == "__main__":
    main()
