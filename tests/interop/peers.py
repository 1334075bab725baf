"""Shared helpers of the interop tests: start Tocsin, find free ports, run
SQL over HTTP, wait for a condition within a deadline, clean up after."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("TOCSIN_BIN", os.path.join(ROOT, "target", "debug", "tocsin"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tocsin(data_dir, log, extra=()):
    """Starts `tocsin serve` on ephemeral loopback ports; returns (process, grpc, http)."""
    log_flag = ["--log", os.environ["TOCSIN_LOG"]] if os.environ.get("TOCSIN_LOG") else []
    p = subprocess.Popen([BIN, "serve", "--data-dir", data_dir, "--grpc-addr", "127.0.0.1:0",
                          "--http-addr", "127.0.0.1:0", *log_flag, *extra], stdout=subprocess.PIPE, stderr=log,
                         text=True)
    # With --auth, a first start prints the admin token before this line.
    line = p.stdout.readline()
    while line and not line.startswith("tocsin listening"):
        line = p.stdout.readline()
    parts = dict(w.split("=", 1) for w in line.split() if "=" in w)
    # Every address on the line (syslog_tcp=, syslog_udp= when asked for).
    p.listening = parts
    return p, parts["grpc"], parts["http"]


def start_tocsin_with_auth(data_dir, log):
    """`tocsin serve --auth`; returns (process, grpc, http, admin token)."""
    p, grpc, http = start_tocsin(data_dir, log, ["--auth"])
    with open(os.path.join(data_dir, "admin-token")) as f:
        return p, grpc, http, f.read().strip()


def create_token(http, admin, role, *args):
    """`tocsin token create` as an operator runs it: the token is its last line."""
    out = subprocess.run([BIN, "token", "create", "--role", role, "--http-addr", http, "--token", admin, *args],
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def sql(http, q, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{http}/api/v1/sql", data=json.dumps({"sql": q}).encode(),
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        # The server says why; a bare "400 Bad Request" does not.
        raise AssertionError(f"{q!r} -> HTTP {e.code}: {e.read().decode(errors='replace')}") from None


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(what, fn, deadline_s=60, every=0.5):
    """Calls fn until it returns a truthy value; fails after deadline_s."""
    end = time.time() + deadline_s
    last = None
    while time.time() < end:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the peer may not be up yet
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def scratch(prefix):
    """A temporary directory and a list to put started processes in. The
    processes are stopped however the test ends; the directory (with every
    server's log) is removed only when it passed, and named when it failed."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    procs = []
    try:
        yield tmp, procs
    except BaseException:
        print(f"logs kept in {tmp}")
        raise
    finally:
        for p in reversed(procs):
            stop(p)
    shutil.rmtree(tmp, ignore_errors=True)


def webhook_sink(received):
    """A webhook receiver on a loopback port: each POST appends (path, JSON
    payload) to `received`. Returns the port."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_port


def escalation_rules(sink_port, interval, thresholds, step2_after, annotations=""):
    """A rule file: `HighCpu` on each host's last `cpu.usage` over
    `thresholds`, grouped by alert and host, sent to the webhook sink's
    `/oncall` at once and to its `/boss` after `step2_after` unless
    acknowledged."""
    return f"""
groups:
  - name: hosts
    interval: {interval}
    rules:
      - alert: HighCpu
        sql: SELECT host, last_value(usage ORDER BY ts) AS value FROM cpu GROUP BY host
        thresholds: {thresholds}
{annotations}route:
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 1s
  escalation: chain
escalations:
  - name: chain
    steps:
      - {{ after: 0s, notify: [oncall] }}
      - {{ after: {step2_after}, notify: [boss] }}
receivers:
  - name: oncall
    webhook: {{ url: "http://127.0.0.1:{sink_port}/oncall" }}
  - name: boss
    webhook: {{ url: "http://127.0.0.1:{sink_port}/boss" }}
"""
