"""Interop: Tocsin's email receiver delivers an alert notification to a real
SMTP server (aiosmtpd): once over plain SMTP with AUTH PLAIN, once over
STARTTLS (certificate from a private CA given as ca_file) with AUTH PLAIN
allowed only after TLS."""

import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from email import message_from_bytes
from email.header import decode_header, make_header

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

sys.path.insert(0, os.path.dirname(__file__))
from peers import BIN, free_port, sql, wait_for  # noqa: E402


class Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((session.authenticated, envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"tocsin" and auth_data.password == b"s3cret"
    return AuthResult(success=ok)


def make_certs(d):
    """A private CA and a leaf certificate for 127.0.0.1."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tocsin test CA",
        "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", f"{d}/leaf.key",
        "-out", f"{d}/leaf.csr")
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", f"{d}/leaf.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/leaf.pem")
    return f"{d}/ca.pem", f"{d}/leaf.pem", f"{d}/leaf.key"


def scenario(name, tmp, controller_kwargs, email_extra):
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, authenticator=authenticator,
                            **controller_kwargs)
    controller.start()
    rules = os.path.join(tmp, f"rules-{name}.yml")
    with open(rules, "w", encoding="utf-8") as f:
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
{email_extra}
""")
    with open(os.path.join(tmp, f"server-{name}.log"), "w") as log:
        p = subprocess.Popen([BIN, "serve", "--data-dir", os.path.join(tmp, f"data-{name}"), "--grpc-addr",
                              "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--rules", rules],
                             stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = p.stdout.readline()
            http = dict(w.split("=", 1) for w in line.split() if "=" in w)["http"]
            sql(http, "INSERT INTO cpu (ts, host, usage) VALUES (now(), 'web-1', 97)")
            deadline = time.time() + 20
            while not sink.messages and time.time() < deadline:
                time.sleep(0.05)
            assert sink.messages, f"{name}: no email arrived within 20 s (see {log.name})"
            authenticated, mail_from, rcpts, content = sink.messages[0]
            assert authenticated, "the session was not authenticated"
            assert mail_from == "tocsin@example.com", mail_from
            assert rcpts == ["oncall@example.com", "backup@example.com"], rcpts
            msg = message_from_bytes(content)
            subject = str(make_header(decode_header(msg["Subject"])))
            if name == "plain":
                # A subject in Chinese, RFC 2047-encoded, arrives intact.
                assert subject == "告警：[FIRING:1] HighCpu 主机 web-1", subject
            else:
                assert subject.startswith("[FIRING:1] HighCpu"), subject
            parts = {part.get_content_type(): part.get_payload(decode=True).decode() for part in msg.walk()
                     if not part.is_multipart()}
            assert "CPU 97 on web-1" in parts["text/plain"], parts
            assert "<table" in parts["text/html"] and "CPU 97 on web-1" in parts["text/html"], parts
            # The attempt is recorded after the relay accepted the message:
            # it may land a moment after the message does.
            wait_for("the email attempt in system.notifications",
                     lambda: {"integration": "email", "ok": True}
                     in sql(http, "SELECT integration, ok FROM system.notifications"), deadline_s=20)
            print(f"email interop ({name}): ok")
        finally:
            p.terminate()
            p.wait(timeout=30)
            controller.stop()


def main():
    tmp = tempfile.mkdtemp(prefix="tocsin-email-")
    scenario("plain", tmp, {"auth_require_tls": False},
             '      tls: none\n      subject: "告警：{{ title }} 主机 {{ host }}"')
    assert shutil.which("openssl"), "the STARTTLS scenario needs the openssl command (apt-get install openssl)"
    ca, cert, key = make_certs(tmp)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    scenario("starttls", tmp, {"tls_context": ctx, "require_starttls": True},
             f"      tls: starttls\n      ca_file: {ca}")


if __name__ == "__main__":
    sys.exit(main())
