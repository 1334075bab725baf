"""Interop: Debian's rsyslog forwards to Tocsin's syslog listeners, configured
the way rsyslog's own docs show (omfwd), in three ways at once: RFC 5424
over TCP with octet counting, the traditional (RFC 3164) format over UDP,
and rsyslog's forward format over TCP with newline framing. Messages are
injected with `logger` into an rsyslog input socket; each must arrive once
in `logs` with host, service (the tag), level (the severity) and the
facility."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peers import scratch, sql, start_tocsin, wait_for  # noqa: E402

# (tag, facility.severity, rsyslog action) for each route.
ROUTES = [
    ("via5424", "local3.err", 'protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"'),
    ("via3164", "daemon.warning", 'protocol="udp" template="RSYSLOG_TraditionalForwardFormat"'),
    ("vialf", "user.info", 'protocol="tcp" template="RSYSLOG_ForwardFormat"'),
]
PER_ROUTE = 50


def rsyslog_conf(tmp, sock, tcp, udp):
    actions = []
    for tag, _, how in ROUTES:
        port = udp if 'protocol="udp"' in how else tcp
        actions.append(f'if $programname == "{tag}" then {{\n'
                       f'  action(type="omfwd" target="127.0.0.1" port="{port}" {how})\n  stop\n}}')
    return f"""
global(workDirectory="{tmp}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{sock}" CreatePath="on")
""" + "\n".join(actions) + "\n"


def main():
    with scratch("tocsin-rsyslog-") as (tmp, procs):
        log = open(os.path.join(tmp, "tocsin.log"), "w")
        p, _grpc, http = start_tocsin(os.path.join(tmp, "data"), log,
                                      ["--syslog-tcp-addr", "127.0.0.1:0", "--syslog-udp-addr", "127.0.0.1:0"])
        procs.append(p)
        tcp = p.listening["syslog_tcp"].rsplit(":", 1)[1]
        udp = p.listening["syslog_udp"].rsplit(":", 1)[1]
        sock = os.path.join(tmp, "log.sock")
        conf = os.path.join(tmp, "rsyslog.conf")
        with open(conf, "w") as f:
            f.write(rsyslog_conf(tmp, sock, tcp, udp))
        rs = subprocess.Popen(["rsyslogd", "-n", "-f", conf, "-i", os.path.join(tmp, "rsyslog.pid")],
                              stdout=log, stderr=log)
        procs.append(rs)
        wait_for("rsyslog's input socket", lambda: os.path.exists(sock), 20, 0.1)
        for tag, pri, _ in ROUTES:
            for i in range(PER_ROUTE):
                subprocess.run(["logger", "-u", sock, "-t", tag, "-p", pri, f"{tag} message {i} ok"], check=True)
        want = PER_ROUTE * len(ROUTES)
        rows = wait_for(f"{want} forwarded messages", lambda: (lambda r: r if len(r) >= want else None)(
            sql(http, "SELECT host, service, level, message, attributes FROM logs")), 60, 0.5)
        assert len(rows) == want, f"{len(rows)} rows, not {want}"
        host = os.uname().nodename
        levels = {"via5424": ("error", "local3"), "via3164": ("warn", "daemon"), "vialf": ("info", "user")}
        for tag, _, _ in ROUTES:
            mine = [r for r in rows if r["service"] == tag]
            assert len(mine) == PER_ROUTE, f"{tag}: {len(mine)} rows; services seen: " \
                f"{sorted(set(r['service'] for r in rows))}; first row {rows[0]}"
            got = sorted(int(r["message"].split()[2]) for r in mine)
            assert got == list(range(PER_ROUTE)), f"{tag}: messages {got}"
            level, facility = levels[tag]
            for r in mine:
                assert r["level"] == level, f"{tag}: {r}"
                assert f'"facility":"{facility}"' in r["attributes"], f"{tag}: {r}"
                assert r["host"] == host, f"{tag}: host {r['host']!r}, not {host!r}"
                assert r["message"].startswith(f"{tag} message "), f"{tag}: {r}"
        print(f"ok: rsyslog forwarded {want} messages over TCP (RFC 5424, octet-counted; forward format, "
              f"newline-framed) and UDP (RFC 3164); each arrived once with host, service, level and facility")


if __name__ == "__main__":
    main()
