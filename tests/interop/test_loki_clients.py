"""Interop: Loki's push API with real clients, configured as their docs
show: winston-loki (Node.js, Grafana Loki's Winston transport) sending
snappy protobuf and JSON, and python-logging-loki (Python's logging
handler) sending JSON. Every line must arrive once in `logs` with its
time, the service and host from the labels, the level, and the other
labels as attributes."""

import json
import logging
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peers import scratch, sql, start_tocsin, wait_for  # noqa: E402

import logging_loki  # noqa: E402

NODE_DIR = os.path.join(os.path.dirname(__file__), "node")
N = 200


def count(http, where):
    return sql(http, f"SELECT count(*) AS n FROM logs WHERE {where}")[0]["n"]


def main():
    with scratch("tocsin-loki-") as (tmp, procs):
        log = open(os.path.join(tmp, "tocsin.log"), "w")
        p, _grpc, http = start_tocsin(os.path.join(tmp, "data"), log)
        procs.append(p)
        for fmt, app in (("proto", "checkout"), ("json", "search")):
            labels = json.dumps({"app": app, "host": f"node-{fmt}", "env": "prod"})
            out = subprocess.run(["node", "loki_push.js", f"http://{http}", fmt, labels, str(N)], cwd=NODE_DIR,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, f"winston-loki ({fmt}) failed: {out.stdout}{out.stderr}"
            wait_for(f"{N} {fmt} lines", lambda: count(http, f"service = '{app}'") == N, 30, 0.2)
            rows = sql(http, f"SELECT CAST(ts AS BIGINT) AS ns, host, level, message, attributes FROM logs "
                             f"WHERE service = '{app}' ORDER BY ts")
            # winston-loki appends the entry's other fields as JSON: `line 3 {"level":"info"}`.
            assert [r["message"].split(" {")[0] for r in rows] == [f"{fmt} line {i}" for i in range(N)], rows[:3]
            t0 = 1_767_225_600_000_000_000  # 2026-01-01 in ns, as the script stamps line 0
            assert [r["ns"] for r in rows] == [t0 + i * 1_000_000_000 for i in range(N)], rows[:3]
            assert {r["host"] for r in rows} == {f"node-{fmt}"}
            assert [r["level"] for r in rows] == ["error" if i % 10 == 0 else "info" for i in range(N)]
            attrs = json.loads(rows[1]["attributes"])
            assert attrs.get("env") == "prod" and attrs.get("part") == "1", attrs

        # python-logging-loki: JSON, the stream's labels from `tags`.
        handler = logging_loki.LokiHandler(url=f"http://{http}/loki/api/v1/push",
                                           tags={"application": "pyapp", "hostname": "py-1"}, version="1")
        logger = logging.getLogger("tocsin-interop")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        for i in range(20):
            logger.warning("py line %d", i, extra={"tags": {"order": str(1000 + i)}})
        wait_for("20 python lines", lambda: count(http, "service = 'pyapp'") == 20, 30, 0.2)
        rows = sql(http, "SELECT host, level, message, attributes FROM logs WHERE service = 'pyapp' ORDER BY message")
        assert {r["host"] for r in rows} == {"py-1"}, rows[:2]
        assert {r["level"] for r in rows} == {"warn"}, rows[:2]  # the handler's `severity` label, warning
        orders = sorted(json.loads(r["attributes"])["order"] for r in rows)
        assert orders == [str(1000 + i) for i in range(20)], orders
        print(f"ok: winston-loki (snappy protobuf and JSON, {N} lines each) and python-logging-loki (JSON) pushed "
              "every line once, with time, service, host, level and labels")


if __name__ == "__main__":
    main()
