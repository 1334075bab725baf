"""Interop: the same InfluxDB line protocol (TSBS `cpu` lines and
Telegraf-style lines with every field type, escapes, gzip, second
precision) goes to the real InfluxDB 1.6 (Debian package) and to Tocsin;
InfluxQL answers from InfluxDB and SQL answers from Tocsin must agree."""

import gzip
import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from peers import free_port, get_json, scratch, sql, start_tocsin, wait_for  # noqa: E402

START_S = 1_451_606_400  # 2016-01-01, as TSBS
HOSTS = 10
STEPS = 360  # one hour at 10 s


def tsbs_lines():
    rng = random.Random(7)
    lines = []
    for step in range(STEPS):
        for h in range(HOSTS):
            fields = ",".join(f"usage_{f}={rng.randrange(100)}i" for f in ("user", "system", "idle"))
            lines.append(f"cpu,hostname=host_{h},region=eu-west-{h % 3},datacenter=eu-west-{h % 3}a,"
                         f"rack={h % 4},os=Ubuntu16.10,arch=x64 {fields} {START_S + step * 10}")
    return "\n".join(lines) + "\n"


def telegraf_lines():
    # Floats, integers, strings with quotes and commas, booleans; a tag
    # value with an escaped space and comma; a measurement with a space.
    return "\n".join([
        'system,host=web\\ 1 load1=0.25,load5=1.5,n_users=3i,up=true 1451606400',
        'system,host=web\\ 1 load1=0.5,load5=1.25,n_users=4i,up=false 1451606410',
        'system,host=db\\,2 load1=2.75,load5=3,n_users=0i,up=true 1451606400',
        'disk\\ io,host=db\\,2 note="full, \\"really\\"",reads=12i 1451606400',
    ]) + "\n"


def post(url, body, encoding=None):
    headers = {"content-encoding": encoding} if encoding else {}
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        e.msg = f"{e.msg}: {url}: {e.read().decode(errors='replace')}"
        raise


def influxql(base, db, q):
    qs = urllib.parse.urlencode({"db": db, "q": q, "epoch": "s"})
    r = get_json(f"{base}/query?{qs}", timeout=60)
    res = r["results"][0]
    assert "error" not in res, res
    return res.get("series", [])


def close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def start_influx(tmp, log):
    http_port, rpc_port = free_port(), free_port()
    conf = os.path.join(tmp, "influxdb.conf")
    with open(conf, "w") as f:
        f.write(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{tmp}/influx/meta"
[data]
  dir = "{tmp}/influx/data"
  wal-dir = "{tmp}/influx/wal"
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
[monitor]
  store-enabled = false
""")
    p = subprocess.Popen(["influxd", "-config", conf], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{http_port}"
    wait_for("influxd to answer", lambda: urllib.request.urlopen(f"{base}/ping", timeout=2).status == 204)
    return p, base


def main():
    with scratch("tocsin-influx-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog, open(os.path.join(tmp, "influx.log"), "w") as ilog:
        tocsin, _grpc, http = start_tocsin(os.path.join(tmp, "data"), tlog)
        procs.append(tocsin)
        influx, base = start_influx(tmp, ilog)
        procs.append(influx)
        post(f"{base}/query?" + urllib.parse.urlencode({"q": "CREATE DATABASE lp"}), b"")

        cpu = gzip.compress(tsbs_lines().encode())
        tg = telegraf_lines().encode()
        for url in (f"{base}/write?db=lp&precision=s", f"http://{http}/write?db=lp&precision=s"):
            assert post(url, cpu, "gzip") == 204
            assert post(url, tg) == 204
        # The same through the v2 endpoint into another Tocsin database.
        assert post(f"http://{http}/api/v2/write?bucket=lp2&precision=s", cpu, "gzip") == 204

        # 1. Per-host aggregates.
        theirs = influxql(base, "lp", "SELECT max(usage_user), mean(usage_system), count(usage_idle), "
                                      "sum(usage_idle) FROM cpu GROUP BY hostname")
        theirs = {s["tags"]["hostname"]: s["values"][0][1:] for s in theirs}
        for db in ("lp", "lp2"):
            ours = sql(http, f"SELECT hostname, max(usage_user) AS a, avg(usage_system) AS b, "
                             f"count(usage_idle) AS c, sum(usage_idle) AS d FROM {db}.cpu GROUP BY hostname")
            ours = {r["hostname"]: [r["a"], r["b"], r["c"], r["d"]] for r in ours}
            assert ours.keys() == theirs.keys(), (ours.keys(), theirs.keys())
            for h in ours:
                assert all(close(a, b) for a, b in zip(ours[h], theirs[h])), (db, h, ours[h], theirs[h])

        # 2. Time buckets (TSBS single-groupby shape): 10-minute max per host.
        lo, hi = START_S + 600, START_S + 3000
        theirs = influxql(base, "lp", f"SELECT max(usage_user) FROM cpu WHERE hostname = 'host_3' AND "
                                      f"time >= {lo}s AND time < {hi}s GROUP BY time(10m)")
        theirs = [(t, v) for t, v in theirs[0]["values"]]
        ours = sql(http, f"SELECT CAST(date_bin(INTERVAL '10 minutes', ts) AS BIGINT) / 1000000000 AS t, "
                         f"max(usage_user) AS m FROM lp.cpu WHERE hostname = 'host_3' AND "
                         f"ts >= to_timestamp({lo}) AND ts < to_timestamp({hi}) GROUP BY 1 ORDER BY 1")
        assert [(r["t"], r["m"]) for r in ours] == theirs, (ours, theirs)

        # 3. Every field type, escapes and raw points.
        theirs = influxql(base, "lp", "SELECT load1, load5, n_users, up, host FROM system")
        theirs = sorted(tuple(v) for v in theirs[0]["values"])
        ours = sql(http, "SELECT CAST(ts AS BIGINT) / 1000000000 AS t, load1, load5, n_users, up, host "
                         "FROM lp.system")
        ours = sorted((r["t"], r["load1"], r["load5"], r["n_users"], r["up"], r["host"]) for r in ours)
        assert ours == theirs, (ours, theirs)
        theirs = influxql(base, "lp", 'SELECT note, reads, host FROM "disk io"')[0]["values"]
        ours = sql(http, 'SELECT CAST(ts AS BIGINT) / 1000000000 AS t, note, reads, host FROM lp."disk io"')
        assert [[r["t"], r["note"], r["reads"], r["host"]] for r in ours] == theirs, (ours, theirs)

        # 4. Bad input: both refuse the unparsable line with a 400.
        for url in (f"{base}/write?db=lp", f"http://{http}/write?db=lp"):
            try:
                post(url, b"cpu,hostname=x usage_user=oops 1\n")
                raise AssertionError(f"{url} accepted a bad line")
            except urllib.error.HTTPError as e:
                assert e.code == 400, (url, e.code)
        print(f"ok: InfluxDB 1.6 and Tocsin agree on {HOSTS * STEPS} TSBS lines and the Telegraf-style lines "
              f"(aggregates, time buckets, every field type, escapes, gzip, v1 and v2 endpoints)")


if __name__ == "__main__":
    main()
