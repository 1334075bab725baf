"""Interop: Tocsin's email receiver delivers an alert notification to a real
SMTP server (aiosmtpd), authenticating with AUTH PLAIN."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from email import message_from_bytes

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("TOCSIN_BIN", os.path.join(ROOT, "target", "debug", "tocsin"))


class Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((session.authenticated, envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"tocsin" and auth_data.password == b"s3cret"
    return AuthResult(success=ok)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sql(http, q):
    req = urllib.request.Request(f"http://{http}/api/v1/sql", data=json.dumps({"sql": q}).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def main():
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    tmp = tempfile.mkdtemp(prefix="tocsin-email-")
    rules = os.path.join(tmp, "rules.yml")
    with open(rules, "w") as f:
        f.write(f"""
groups:
  - name: hosts
    interval: 200ms
    rules:
      - alert: HighCpu
        sql: SELECT host, max(usage) AS value FROM cpu GROUP BY host
        thresholds: {{ critical: "> 90" }}
        annotations: {{ summary: "CPU {{{{ value }}}} on {{{{ host }}}}" }}
route:
  receiver: mail
  group_by: [alertname, host]
  group_wait: 0s
receivers:
  - name: mail
    email:
      to: [oncall@example.com, backup@example.com]
      from: tocsin@example.com
      smarthost: "127.0.0.1:{port}"
      username: tocsin
      password: s3cret
""")
    with open(os.path.join(tmp, "server.log"), "w") as log:
        p = subprocess.Popen([BIN, "serve", "--data-dir", os.path.join(tmp, "data"), "--grpc-addr", "127.0.0.1:0",
                              "--http-addr", "127.0.0.1:0", "--rules", rules],
                             stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = p.stdout.readline()
            http = dict(w.split("=", 1) for w in line.split() if "=" in w)["http"]
            sql(http, "INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 97)")
            deadline = time.time() + 20
            while not sink.messages and time.time() < deadline:
                time.sleep(0.05)
            assert sink.messages, "no email arrived within 20 s"
            authenticated, mail_from, rcpts, content = sink.messages[0]
            assert authenticated, "the session was not authenticated"
            assert mail_from == "tocsin@example.com", mail_from
            assert rcpts == ["oncall@example.com", "backup@example.com"], rcpts
            msg = message_from_bytes(content)
            assert msg["Subject"].startswith("[FIRING:1] HighCpu"), msg["Subject"]
            body = msg.get_payload(decode=True).decode()
            assert "web-1" in body and "CPU 97 on web-1" in body, body
            attempts = sql(http, "SELECT integration, ok FROM system.notifications")
            assert {"integration": "email", "ok": True} in attempts, attempts
            print("email interop: ok")
        finally:
            p.terminate()
            p.wait(timeout=30)
            controller.stop()


if __name__ == "__main__":
    sys.exit(main())
