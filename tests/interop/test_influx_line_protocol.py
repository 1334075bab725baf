"""Interop: the same InfluxDB line protocol (TSBS `cpu` lines and
Telegraf-style lines with every field type, escapes, gzip, second
precision) goes to the real InfluxDB 1.6 (Debian package) and to Tocsin;
InfluxQL answers from InfluxDB and SQL answers from Tocsin must agree.
Then InfluxDB's own query API: the same InfluxQL statements (SHOW ...,
SELECT with aggregates, GROUP BY time and tags, fill, regexes, LIMIT) sent
to both `/query` endpoints must give the same JSON; the InfluxDB Python
client (`CREATE DATABASE` as Telegraf sends it, `SHOW DATABASES`, queries)
and Debian's `influx` CLI work against Tocsin."""

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


def same(a, b):
    """Equal JSON, floats within 1e-9 (summation order differs)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return close(float(a), float(b))
    return a == b


def raw_query(base, db, q, epoch=None):
    params = {"db": db, "q": q}
    if epoch:
        params["epoch"] = epoch
    try:
        with urllib.request.urlopen(f"{base}/query?" + urllib.parse.urlencode(params), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def influxql_side_by_side(base, http):
    lo, hi = START_S, START_S + STEPS * 10
    statements = [
        "SHOW MEASUREMENTS",
        "SHOW MEASUREMENTS WITH MEASUREMENT =~ /^c/ LIMIT 1",
        "SHOW TAG KEYS FROM cpu",
        "SHOW TAG KEYS",
        "SHOW FIELD KEYS",
        "SHOW TAG VALUES FROM cpu WITH KEY = \"hostname\"",
        "SHOW TAG VALUES WITH KEY IN (\"region\", \"host\")",
        "SHOW TAG VALUES FROM cpu WITH KEY = \"hostname\" WHERE region = 'eu-west-1'",
        "SHOW RETENTION POLICIES ON lp",
        f"SELECT usage_user FROM cpu WHERE hostname = 'host_1' AND time >= {lo}s AND time < {lo + 60}s",
        f"SELECT * FROM cpu WHERE time >= {lo}s AND time < {lo + 20}s",
        f"SELECT * FROM system",
        f"SELECT mean(usage_idle) FROM cpu WHERE time >= {lo}s AND time < {hi}s GROUP BY time(10m)",
        f"SELECT mean(\"usage_idle\") FROM \"cpu\" WHERE time >= {lo}000ms and time <= {hi}000ms "
        f"GROUP BY time(5m), \"hostname\" fill(null)",
        f"SELECT max(usage_user), min(usage_idle) FROM cpu WHERE time >= {lo}s AND time < {lo + 1800}s "
        f"GROUP BY time(15m), region fill(0)",
        f"SELECT count(usage_idle), sum(usage_system) FROM cpu WHERE time >= {lo}s AND time < {hi}s GROUP BY region",
        "SELECT last(usage_user) FROM cpu WHERE hostname = 'host_2'",
        "SELECT first(load1), max(n_users) FROM system WHERE host = 'web 1'",
        f"SELECT max(usage_user) FROM cpu WHERE hostname = 'host_4' AND time >= {lo}s AND time < {hi}s",
        f"SELECT sum(usage_user) AS total FROM cpu WHERE time >= {lo}s AND time < {hi}s "
        f"GROUP BY time(30m), * fill(none)",
        f"SELECT mean(usage_idle) FROM cpu WHERE time >= {hi - 600}s AND time < {hi + 600}s "
        f"GROUP BY time(10m) fill(previous)",
        f"~SELECT usage_user FROM cpu WHERE hostname =~ /^host_(1|3)$/ AND usage_user > 90 AND time < {lo + 300}s",
        # `~`: InfluxDB orders the points of one instant as its iterators
        # merge them (not by series), so those are compared as sets.
        f"~SELECT usage_user FROM cpu WHERE hostname != 'host_1' AND time < {lo + 20}s",
        f"SELECT usage_user FROM cpu WHERE hostname = 'host_2' AND time < {lo + 60}s ORDER BY time DESC LIMIT 2",
        f"SELECT median(usage_idle), spread(usage_idle), stddev(usage_idle) FROM cpu WHERE time >= {lo}s "
        f"AND time < {hi}s GROUP BY hostname",
        "SELECT mean(usage_idle) FROM cpu WHERE nosuchtag = 'x'",
        "SELECT mean(usage_idle) FROM nosuch",
        f"SELECT mean(usage_idle) FROM cpu WHERE time >= {lo}s AND time < {hi}s GROUP BY time(10m, 5m) "
        f"LIMIT 3 OFFSET 1",
        f"SELECT usage_user FROM cpu WHERE time >= {lo}s AND time < {lo + 20}s AND hostname = 'host_0'; "
        f"SELECT load1 FROM system LIMIT 1",
        'SELECT note, reads FROM "disk io"',
        # Found by a hostile review: empty buckets count 0, LIMIT on SHOW,
        # tags alone select nothing, an unknown database, negative epochs.
        f"SELECT count(usage_user) FROM cpu WHERE hostname = 'host_1' AND time >= {hi - 60}s AND time < {hi + 60}s "
        f"GROUP BY time(30s)",
        "SHOW TAG VALUES FROM cpu WITH KEY = \"hostname\" LIMIT 2 OFFSET 1",
        "SHOW TAG KEYS FROM cpu LIMIT 2",
        "SELECT hostname FROM cpu LIMIT 3",
        "SHOW RETENTION POLICIES ON nosuchdb",
        f"SELECT usage_user FROM cpu WHERE hostname = 'host_0' AND time > -1 AND time < {lo + 20}s",
        f"SELECT usage_user FROM cpu WHERE hostname = 'host_0' AND time < {lo + 30}s LIMIT 0",
    ]
    def by_instant(answer):
        for r in answer[1].get("results", []):
            for se in r.get("series", []):
                se["values"].sort(key=lambda v: (str(v[0]), json.dumps(v[1:])))
        return answer

    for q in statements:
        unordered = q.startswith("~")
        q = q.lstrip("~")
        for epoch in (None, "s"):
            theirs = raw_query(base, "lp", q, epoch)
            ours = raw_query(f"http://{http}", "lp", q, epoch)
            if unordered:
                theirs, ours = by_instant(theirs), by_instant(ours)
            assert same(theirs, ours), f"{q} (epoch={epoch})\n InfluxDB: {theirs}\n Tocsin:   {ours}"
    return len(statements)


def real_clients(http, tmp):
    from influxdb import InfluxDBClient
    host, port = http.rsplit(":", 1)
    client = InfluxDBClient(host=host, port=int(port), database="metrics")
    client.create_database("metrics")  # what Telegraf's v1 output sends at start
    assert {"name": "metrics"} in client.get_list_database(), client.get_list_database()
    client.write_points([{"measurement": "temp", "tags": {"room": "a"}, "time": "2016-01-01T00:00:00Z",
                          "fields": {"c": 21.5}},
                         {"measurement": "temp", "tags": {"room": "b"}, "time": "2016-01-01T00:00:10Z",
                          "fields": {"c": 19.0}}])
    points = list(client.query("SELECT mean(c) FROM temp GROUP BY room").get_points(tags={"room": "b"}))
    assert points == [{"time": "1970-01-01T00:00:00Z", "mean": 19.0}], points
    # Debian's influx CLI: it pings, then runs the statement.
    out = subprocess.run(["influx", "-host", host, "-port", port, "-database", "metrics", "-format", "json",
                          "-execute", "SELECT c FROM temp WHERE room = 'a'"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    # The CLI asks for nanosecond epochs (`-precision` changes it).
    assert answer["results"][0]["series"][0]["values"] == [[1451606400000000000, 21.5]], answer
    out = subprocess.run(["influx", "-host", host, "-port", port, "-execute", "SHOW DATABASES"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "metrics" in out.stdout, (out.stdout, out.stderr)
    # A statement InfluxQL has and Tocsin does not: a clear error, not a crash.
    status, body = raw_query(f"http://{http}", "metrics", "SELECT derivative(c) FROM temp")
    assert status == 200 and "derivative() is not supported" in body["results"][0]["error"], body


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


def start_victoria(tmp, log):
    port = free_port()
    p = subprocess.Popen(["victoria-metrics", f"-storageDataPath={os.path.join(tmp, 'vm')}",
                          f"-httpListenAddr=127.0.0.1:{port}", "-retentionPeriod=100y",
                          "-search.disableCache"], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    wait_for("VictoriaMetrics to answer", lambda: urllib.request.urlopen(f"{base}/health", timeout=2).status == 200)
    return p, base


# PromQL over line-protocol fields, which both name `measurement_field`
# (a boolean is 1 or 0), asked of VictoriaMetrics and Tocsin at a time
# where every series has a sample (VictoriaMetrics leaves out a sample at
# exactly the query's time when it is the series' only one: a second
# after it). (Functions where MetricsQL departs from
# PromQL, such as rate's extrapolation, are compared with Prometheus in
# test_prometheus_remote_write.py.)
FIELD_PROMQL = [
    ("cpu_usage_user", START_S + 1800),
    ('cpu_usage_idle{hostname="host_3"}', START_S + 1800),
    ("sum by (region) (cpu_usage_system)", START_S + 1800),
    ("avg(cpu_usage_user) + max(cpu_usage_idle)", START_S + 1800),
    ('sum(max_over_time(cpu_usage_idle{hostname="host_3"}[5m]))', START_S + 1800),
    ('count by (__name__) ({__name__=~"cpu_.*"})', START_S + 1800),
    ('{__name__=~"system_.*", host="web 1"}', 1451606411),
    ("system_up", 1451606411),
    ("system_n_users * 2", 1451606411),
    ('{__name__="disk io_reads"}', 1451606401),
]


def vm_side_by_side(vm, http):
    """Every FIELD_PROMQL expression in both; returns how many agreed."""
    def answer(base, q, t):
        d = get_json(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": t}))
        assert d["status"] == "success", (base, q, d)
        return sorted((json.dumps(r["metric"], sort_keys=True), float(r["value"][1])) for r in d["data"]["result"])
    for q, t in FIELD_PROMQL:
        theirs, ours = answer(vm, q, t), answer(f"http://{http}", q, t)
        assert theirs and theirs == ours, f"{q}\n VictoriaMetrics: {theirs}\n Tocsin: {ours}"
    names = lambda base: {n for n in get_json(f"{base}/api/v1/label/__name__/values")["data"]
                          if n.startswith(("cpu_", "system_"))}  # VictoriaMetrics lists string fields too
    theirs, ours = names(vm), names(f"http://{http}")
    assert theirs == ours, (theirs, ours)
    return len(FIELD_PROMQL)


def main():
    with scratch("tocsin-influx-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog, open(os.path.join(tmp, "influx.log"), "w") as ilog:
        tocsin, _grpc, http = start_tocsin(os.path.join(tmp, "data"), tlog)
        procs.append(tocsin)
        influx, base = start_influx(tmp, ilog)
        procs.append(influx)
        victoria, vm = start_victoria(tmp, ilog)
        procs.append(victoria)
        post(f"{base}/query?" + urllib.parse.urlencode({"q": "CREATE DATABASE lp"}), b"")

        cpu = gzip.compress(tsbs_lines().encode())
        tg = telegraf_lines().encode()
        for url in (f"{base}/write?db=lp&precision=s", f"http://{http}/write?db=lp&precision=s"):
            assert post(url, cpu, "gzip") == 204
            assert post(url, tg) == 204
        # VictoriaMetrics and Tocsin's default database, for PromQL.
        for url in (f"{vm}/write?precision=s", f"http://{http}/write?precision=s"):
            assert post(url, cpu, "gzip") == 204
            assert post(url, tg) == 204
        post(f"{vm}/internal/force_flush", b"")
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
        # 5. PromQL over the fields, side by side with VictoriaMetrics.
        m = wait_for("PromQL over line-protocol fields to agree with VictoriaMetrics",
                     lambda: vm_side_by_side(vm, http), deadline_s=30)
        # 6. InfluxQL through /query, side by side; then the real clients.
        n = influxql_side_by_side(base, http)
        real_clients(http, tmp)
        print(f"ok: InfluxDB 1.6 and Tocsin agree on {HOSTS * STEPS} TSBS lines and the Telegraf-style lines "
              f"(aggregates, time buckets, every field type, escapes, gzip, v1 and v2 endpoints); "
              f"{n} InfluxQL statements give the same /query answers; the InfluxDB Python client and the influx CLI "
              f"work against Tocsin; {m} PromQL expressions over the fields agree with VictoriaMetrics 1.79")


if __name__ == "__main__":
    main()
