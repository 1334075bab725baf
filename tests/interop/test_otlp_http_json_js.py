"""Interop: the OpenTelemetry JavaScript SDK's OTLP/HTTP exporters (which
send JSON, the encoding browsers and Node.js services use by default)
export log records and metrics to Tocsin's /v1/logs and /v1/metrics. Every
record must arrive once with its time, severity, resource and attributes;
the counter and the gauge must hold the values the SDK exported."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peers import scratch, sql, start_tocsin, wait_for  # noqa: E402

NODE_DIR = os.path.join(os.path.dirname(__file__), "node")
N = 300


def main():
    with scratch("tocsin-otlp-json-") as (tmp, procs):
        log = open(os.path.join(tmp, "tocsin.log"), "w")
        p, _grpc, http = start_tocsin(os.path.join(tmp, "data"), log)
        procs.append(p)
        out = subprocess.run(["node", "otlp_json.js", f"http://{http}", str(N)], cwd=NODE_DIR,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"the JS SDK's export failed: {out.stdout}{out.stderr}"
        assert "otel" not in out.stderr, out.stderr
        rows = wait_for(f"{N} log records", lambda: (lambda r: r if len(r) == N else None)(
            sql(http, "SELECT CAST(ts AS BIGINT) AS ns, service, host, level, message, attributes FROM logs "
                      "ORDER BY ts")), 30, 0.2)
        t0 = 1_767_225_600_000_000_000  # 2026-01-01, the script's first record (ms resolution)
        assert [r["ns"] for r in rows] == [t0 + i * 1_000_000 for i in range(N)], rows[:2]
        assert [r["message"] for r in rows] == [f"js record {i}" for i in range(N)], rows[:2]
        assert {(r["service"], r["host"]) for r in rows} == {("web-frontend", "browser-1")}, rows[:2]
        assert [r["level"] for r in rows] == ["error" if i % 5 == 0 else "info" for i in range(N)]
        attrs = json.loads(rows[7]["attributes"])
        assert attrs["cart.items"] == "7" and attrs["user.tier"] == "gold", attrs
        clicks = sql(http, 'SELECT value, button, "service.name" AS s FROM "ui.clicks"')
        assert clicks == [{"value": 7.0, "button": "buy", "s": "web-frontend"}], clicks
        heap = sql(http, 'SELECT value FROM "ui.heap"')
        assert heap == [{"value": 42.5}], heap
        print(f"ok: the OpenTelemetry JS SDK exported {N} log records and a counter and a gauge as OTLP/HTTP JSON; "
              "all arrived with time, severity, resource and attributes")


if __name__ == "__main__":
    main()
