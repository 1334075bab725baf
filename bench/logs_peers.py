#!/usr/bin/env python3
"""Log searches in Tocsin and its peers, in one run, on the same data.

`tocsin-log-bench --peers` runs this while its server still holds the
generated logs (persisted into segments). Every engine gets the same data,
loaded from Tocsin's own Parquet segments, and answers each search in its
own dialect; the answers are compared row by row:

- tocsin: the server, over HTTP `/api/v1/sql` (JSON);
- duckdb: DuckDB, a native table ordered by (service, host, level, ts);
- duckdb-segments: DuckDB reading Tocsin's segments directly;
- clickhouse: ClickHouse's engine in-process (the `chdb` package), a
  MergeTree table ordered by (service, host, level, ts) with a token bloom
  filter index on `message` (`tokenbf_v1(32768, 3, 0)`, one per granule of
  8,192 rows: ClickHouse's documented example), merged (`OPTIMIZE FINAL`).

Each search is written the way a user of that engine would write it:
`matches()` in Tocsin, `LIKE` in DuckDB (it has no token search), and
`hasToken()` in ClickHouse (the function its token index serves), with
`LIKE` on the whole token where the token has separators. Times are
wall-clock per statement until the whole answer is in the client in the
engine's own form (JSON text for Tocsin and ClickHouse, an Arrow table for
DuckDB); medians over `--runs` runs after one warm-up. Exits with status 1
when an answer differs.

    python3 bench/logs_peers.py --http 127.0.0.1:4318 --data-dir ./tocsin-data --rare ERR-7731-QUOTA \\
        [--runs 20] [--engines tocsin,duckdb,duckdb-segments,clickhouse]
"""

import argparse
import atexit
import glob
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tsbs_peers import ClickHouse, DuckDb, Tocsin, agree  # noqa: E402

ENGINES = ["tocsin", "duckdb", "duckdb-segments", "clickhouse"]


def searches(rare):
    """(name, {engine: SQL}) for each search; `rare` is a token with separators (A-1-B)."""
    words = re.findall(r"[A-Za-z0-9_]+", rare)
    has_rare = " AND ".join(f"hasToken(message, '{w}')" for w in words)
    cols = "ts, service, host, message"
    minute = "SELECT {bucket} AS minute, level, count(*) AS n FROM logs GROUP BY minute, level ORDER BY minute, level"
    return [
        (
            "rare token, whole range",
            {
                "tocsin": f"SELECT {cols} FROM logs WHERE matches(message, '{rare}') ORDER BY ts",
                "duckdb": f"SELECT {cols} FROM logs WHERE message LIKE '%{rare}%' ORDER BY ts",
                "clickhouse": f"SELECT {cols} FROM logs WHERE {has_rare} AND message LIKE '%{rare}%' ORDER BY ts",
            },
        ),
        (
            "rare token, LIKE",
            {
                "tocsin": f"SELECT {cols} FROM logs WHERE message LIKE '%{rare}%' ORDER BY ts",
                "duckdb": f"SELECT {cols} FROM logs WHERE message LIKE '%{rare}%' ORDER BY ts",
                "clickhouse": f"SELECT {cols} FROM logs WHERE message LIKE '%{rare}%' ORDER BY ts",
            },
        ),
        (
            "level = error AND two terms",
            {
                "tocsin": "SELECT count(*) AS n FROM logs WHERE level = 'error' "
                "AND matches(message, 'declined AND insufficient')",
                "duckdb": "SELECT count(*) AS n FROM logs WHERE level = 'error' "
                "AND message LIKE '%declined%' AND message LIKE '%insufficient%'",
                "clickhouse": "SELECT count(*) AS n FROM logs WHERE level = 'error' "
                "AND hasToken(message, 'declined') AND hasToken(message, 'insufficient')",
            },
        ),
        (
            "count by level per minute",
            {
                "tocsin": minute.format(bucket="date_bin(INTERVAL '1 minute', ts)"),
                "duckdb": minute.format(bucket="date_trunc('minute', ts)"),
                "clickhouse": minute.format(bucket="toStartOfMinute(ts)"),
            },
        ),
    ]


class LogsClickHouse(ClickHouse):
    def __init__(self, files):
        from chdb import session

        self.dir = tempfile.mkdtemp(prefix="chdb-logs-")
        # The MergeTree's files (about 0.9 GB for 100 M lines) go when this ends.
        atexit.register(shutil.rmtree, self.dir, ignore_errors=True)
        self.s = session.Session(self.dir)
        self.s.query("CREATE DATABASE IF NOT EXISTS bench")
        self.s.query(
            "CREATE TABLE bench.logs (ts DateTime64(9, 'UTC'), service LowCardinality(String), "
            "host LowCardinality(String), level LowCardinality(String), message String, trace_id String, "
            "span_id String, attributes String, INDEX tok message TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 1) "
            "ENGINE = MergeTree ORDER BY (service, host, level, ts)"
        )
        for f in files:
            self.s.query(
                "INSERT INTO bench.logs SELECT ts, service, host, level, ifNull(message, ''), ifNull(trace_id, ''), "
                f"ifNull(span_id, ''), ifNull(attributes, '') FROM file('{f}', Parquet)"
            )
        self.s.query("OPTIMIZE TABLE bench.logs FINAL")
        self.s.query("USE bench")

    def run(self, sql):
        out = self.s.query(sql, "JSON")
        return out.bytes() if hasattr(out, "bytes") else str(out).encode()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http", required=True, help="Tocsin's HTTP address")
    p.add_argument("--data-dir", required=True, help="Tocsin's data directory (its segments are read)")
    p.add_argument("--database", default="public")
    p.add_argument("--rare", required=True, help="the planted rare token")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--engines", default=",".join(ENGINES))
    a = p.parse_args()

    files = sorted(glob.glob(os.path.join(a.data_dir, "segments", a.database, "logs", "**", "*.parquet"), recursive=True))
    if not files:
        sys.exit(f"no segments of table logs under {a.data_dir} (persist first)")
    wanted = [e.strip() for e in a.engines.split(",") if e.strip()]
    for e in wanted:
        if e not in ENGINES:
            sys.exit(f"unknown engine {e!r}; engines: {', '.join(ENGINES)}")
    engines = []
    for e in wanted:
        t = time.perf_counter()
        if e == "tocsin":
            engines.append(Tocsin(a.http))
        elif e in ("duckdb", "duckdb-segments"):
            # Log tables are never packed (docs/storage.md, Packs): their own files only.
            engines.append(DuckDb((files, []), native=(e == "duckdb"), table="logs", order="service, host, level, ts"))
        else:
            engines.append(LogsClickHouse(files))
        print(f"{e}: loaded {len(files)} segment file(s) in {time.perf_counter() - t:.1f} s", flush=True)

    differences = []
    medians = {}
    for name, sqls in searches(a.rare):
        reference = None
        for e in engines:
            sql = sqls["duckdb" if e.name == "duckdb-segments" else e.name]
            rows = e.rows(e.run(sql))  # warm-up, not counted; its answer is compared
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                e.run(sql)
                times.append((time.perf_counter() - t) * 1000)
            medians[(name, e.name)] = statistics.median(times)
            reference = agree(reference, e.name, rows, name, sql, differences)
    print(f"median ms per search ({a.runs} runs each)")
    print(f"{'search':<30}" + "".join(f"{e.name:>17}" for e in engines))
    for name, _ in searches(a.rare):
        print(f"{name:<30}" + "".join(f"{medians[(name, e.name)]:>17.1f}" for e in engines))
    if differences:
        print(f"{len(differences)} answer(s) differ:")
        for d in differences:
            print("  " + d)
        sys.exit(1)
    print(f"answers agree in all {len(engines)} engines")


if __name__ == "__main__":
    main()
