#!/usr/bin/env python3
"""The TSBS cpu-only queries in Tocsin and its peers, in one run, on the same data.

`tocsin-bench --statements-out FILE` writes the statements it timed; this
script runs every one of them again in each engine and checks that all
engines give the same answer:

- tocsin: the server, over HTTP `/api/v1/sql` (JSON), as the bench does;
- tocsin-arrow: the same, answered as an Arrow IPC stream (`Accept:
  application/vnd.apache.arrow.stream`) read into a pyarrow Table, the
  form DuckDB's figure ends in;
- duckdb: DuckDB, a native table loaded from Tocsin's segments;
- duckdb-segments: DuckDB reading Tocsin's Parquet segments directly;
- clickhouse: ClickHouse's engine in-process (the `chdb` package), a
  MergeTree table ordered by (hostname, ts), loaded from the segments and
  merged (`OPTIMIZE ... FINAL`).

Each engine's time is wall-clock per statement until the whole result is
in the client in the engine's own form: the HTTP body (JSON) for Tocsin, a
pyarrow Table for tocsin-arrow and DuckDB, the JSON text for ClickHouse. Turning those into
Python rows to compare them is not timed (in Python it costs more than most
queries: 100 ms for high-cpu-all's 34 k rows). It prints one table of medians per query type, and exits with
status 1 when an answer differs (naming the query, the engines and the first
differing row).

    python3 bench/tsbs_peers.py --http 127.0.0.1:4318 --data-dir ./tocsin-data \\
        --statements statements.jsonl [--engines tocsin,tocsin-arrow,duckdb,duckdb-segments,clickhouse]

The segments must hold all the data (`POST /api/v1/admin/persist` first, as
`bench/run.sh` does). Used by `bench/run.sh --peers` and by the interop suite
(`tests/interop/test_tsbs_peers.py`, answers only).
"""

import argparse
import datetime as dt
import glob
import json
import math
import os
import re
import statistics
import sys
import time
import urllib.request

ENGINES = ["tocsin", "tocsin-arrow", "duckdb", "duckdb-segments", "clickhouse"]

TS_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


def to_ns(v):
    """A timestamp (datetime or text) as Unix nanoseconds."""
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)
        delta = v - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    text = v.replace(" ", "T")
    frac = 0
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", text)
    base, digits, zone = m.group(1), m.group(2), m.group(3)
    if digits:
        frac = int((digits[1:] + "000000000")[:9])
    zone = zone or "+00:00"
    if zone == "Z":
        zone = "+00:00"
    parsed = dt.datetime.fromisoformat(base + zone)
    return to_ns(parsed) + frac


def norm(v):
    """A value as the comparison sees it: timestamps as ns, numbers as float."""
    if isinstance(v, dt.datetime) or (isinstance(v, str) and TS_TEXT.match(v)):
        return ("ts", to_ns(v))
    if isinstance(v, bool):
        return ("num", float(v))
    if isinstance(v, (int, float)):
        return ("num", float(v))
    if v is None:
        return ("null", None)
    return ("text", str(v))


def same(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "num":
        return math.isclose(a[1], b[1], rel_tol=1e-9, abs_tol=1e-9)
    return a[1] == b[1]


def first_difference(rows_a, rows_b):
    """None when the answers agree, else a description of the first difference."""
    if len(rows_a) != len(rows_b):
        return f"{len(rows_a)} rows against {len(rows_b)}"
    for i, (a, b) in enumerate(zip(rows_a, rows_b)):
        if a.keys() != b.keys():
            return f"row {i}: columns {sorted(a)} against {sorted(b)}"
        for k in a:
            if not same(a[k], b[k]):
                return f"row {i}, column {k}: {a[k][1]!r} against {b[k][1]!r}"
    return None


def agree(reference, name, rows, label, sql, differences):
    """The first engine's answer (`reference` None) becomes the reference,
    `(name, rows)`; a later one that differs from it is added to
    `differences`. Returns the reference."""
    if reference is None:
        return (name, rows)
    diff = first_difference(reference[1], rows)
    if diff:
        differences.append(f"{label}: {reference[0]} and {name} differ: {diff}\n    {sql}")
    return reference


class Tocsin:
    name = "tocsin"

    def __init__(self, http):
        self.url = f"http://{http}/api/v1/sql"

    def run(self, sql):
        req = urllib.request.Request(
            self.url, data=json.dumps({"sql": sql}).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req) as resp:
            return resp.read()

    def rows(self, result):
        return [{k: norm(v) for k, v in r.items()} for r in json.loads(result)]


class TocsinArrow(Tocsin):
    name = "tocsin-arrow"

    def run(self, sql):
        import pyarrow.ipc

        req = urllib.request.Request(
            self.url,
            data=json.dumps({"sql": sql}).encode(),
            headers={"content-type": "application/json", "accept": "application/vnd.apache.arrow.stream"},
        )
        with urllib.request.urlopen(req) as resp:
            return pyarrow.ipc.open_stream(resp.read()).read_all()

    def rows(self, result):
        return [{n: norm(v) for n, v in r.items()} for r in result.to_pylist()]


class DuckDb:
    """DuckDB over Tocsin's segments of `table`: a native table sorted by
    `order`, or (not `native`) a view reading the segments themselves."""

    def __init__(self, files, native, table="cpu", order="hostname, ts"):
        import duckdb

        self.name = "duckdb" if native else "duckdb-segments"
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        source = f"SELECT * REPLACE (ts::TIMESTAMPTZ AS ts) FROM ({duckdb_source(files, table)})"
        if native:
            self.con.execute(f"CREATE TABLE {table} AS {source} ORDER BY {order}")
        else:
            self.con.execute(f"CREATE VIEW {table} AS {source}")

    def run(self, sql):
        rel = self.con.sql(sql)
        # `to_arrow_table` from DuckDB 1.4 on, `arrow` before.
        fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
        return fetch()

    def rows(self, result):
        return [{n: norm(v) for n, v in r.items()} for r in result.to_pylist()]


def clickhouse_sql(sql):
    """Tocsin's (PostgreSQL-like) statement in ClickHouse's dialect."""
    sql = re.sub(
        r"time_bucket\(INTERVAL '1 (minute|hour)', ts\)", lambda m: f"toStartOfInterval(ts, INTERVAL 1 {m.group(1)})", sql
    )
    sql = re.sub(
        r"'(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})Z'", lambda m: f"toDateTime64('{m.group(1)} {m.group(2)}', 9, 'UTC')", sql
    )
    m = re.match(r"SELECT DISTINCT ON \((\w+)\) \* FROM (\w+) ORDER BY (.*)$", sql)
    if m:
        sql = f"SELECT * FROM {m.group(2)} ORDER BY {m.group(3)} LIMIT 1 BY {m.group(1)}"
    return sql


class ClickHouse:
    name = "clickhouse"

    def __init__(self, files, columns):
        from chdb import session

        own, packs = files
        self.s = session.Session()
        types = {"VARCHAR": "LowCardinality(String)", "BIGINT": "Int64", "DOUBLE": "Float64", "BOOLEAN": "Bool"}
        cols = []
        for name, kind in columns:
            if name == "ts":
                cols.append("ts DateTime64(9, 'UTC')")
            else:
                cols.append(f"{name} {types.get(kind, 'String')}")
        self.s.query("CREATE DATABASE IF NOT EXISTS tsbs")
        self.s.query(f"CREATE TABLE tsbs.cpu ({', '.join(cols)}) ENGINE = MergeTree ORDER BY (hostname, ts)")
        names = ", ".join(name for name, _ in columns)
        for f in own:
            self.s.query(f"INSERT INTO tsbs.cpu ({names}) SELECT {names} FROM file('{f}', Parquet)")
        for f in packs:
            # An INSERT takes file()'s columns from the table it fills unless told
            # otherwise, and cpu has no `__table`.
            self.s.query(f"INSERT INTO tsbs.cpu ({names}) SELECT {names} FROM file('{f}', Parquet) "
                         "WHERE `__table` = 'cpu' SETTINGS use_structure_from_insertion_table_in_table_functions = 0")
        self.s.query("OPTIMIZE TABLE tsbs.cpu FINAL")
        self.s.query("USE tsbs")

    def run(self, sql):
        out = self.s.query(clickhouse_sql(sql), "JSON")
        return out.bytes() if hasattr(out, "bytes") else str(out).encode()

    def rows(self, result):
        result = json.loads(result)
        # 64-bit integers come as text in ClickHouse's JSON.
        ints = {m["name"] for m in result["meta"] if re.match(r"^(U?Int64|Nullable\(U?Int64\))$", m["type"])}
        return [
            {k: norm(int(v) if k in ints and v is not None else v) for k, v in r.items()} for r in result["data"]
        ]


def table_files(data_dir, db, table):
    """Tocsin's files that hold `table`: (its own segments, the packs). Packs
    hold several small tables of a database, their `__table` column naming
    each row's table (docs/storage.md, Packs)."""
    own = sorted(glob.glob(os.path.join(data_dir, "segments", db, table, "**", "*.parquet"), recursive=True))
    packs = sorted(glob.glob(os.path.join(data_dir, "packs", db, "*.parquet")))
    return own, packs


def duckdb_source(files, table):
    """DuckDB SQL reading `table`'s rows from the files of `table_files`."""
    own, packs = files
    parts = []
    if own:
        parts.append(f"SELECT * FROM read_parquet({own!r}, union_by_name = true)")
    if packs:
        parts.append(f"SELECT * EXCLUDE (__table) FROM read_parquet({packs!r}, union_by_name = true) "
                     f"WHERE __table = '{table}'")
    return " UNION ALL BY NAME ".join(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http", required=True, help="Tocsin's HTTP address")
    p.add_argument("--data-dir", required=True, help="Tocsin's data directory (its segments are read)")
    p.add_argument("--database", default="public")
    p.add_argument("--statements", required=True, help="JSON lines from tocsin-bench --statements-out")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--check-only", action="store_true", help="one statement per query type, answers only")
    a = p.parse_args()

    statements = [json.loads(line) for line in open(a.statements) if line.strip()]
    if a.check_only:
        seen, firsts = set(), []
        for s in statements:
            if s["query"] not in seen:
                seen.add(s["query"])
                firsts.append(s)
        statements = firsts
    files = table_files(a.data_dir, a.database, "cpu")
    if not files[0] and not files[1]:
        sys.exit(f"no segments of table cpu under {a.data_dir} (persist first)")

    wanted = [e.strip() for e in a.engines.split(",") if e.strip()]
    for e in wanted:
        if e not in ENGINES:
            sys.exit(f"unknown engine {e!r}; engines: {', '.join(ENGINES)}")
    engines = []
    t = time.perf_counter()
    for e in wanted:
        if e == "tocsin":
            engines.append(Tocsin(a.http))
        elif e == "tocsin-arrow":
            engines.append(TocsinArrow(a.http))
        elif e in ("duckdb", "duckdb-segments"):
            engines.append(DuckDb(files, native=(e == "duckdb")))
        elif e == "clickhouse":
            import duckdb

            described = duckdb.sql(f"DESCRIBE {duckdb_source(files, 'cpu')}").fetchall()
            engines.append(ClickHouse(files, [(r[0], r[1]) for r in described]))
    print(f"loaded {len(files[0])} segment file(s) and {len(files[1])} pack(s) into {', '.join(e.name for e in engines)} in {time.perf_counter() - t:.1f} s")

    # One engine at a time per query type: its statements run back to back
    # after one untimed warm-up, as a server answers a stream of queries.
    # (Interleaving engines statement by statement made whichever ran first
    # after the in-process engines pay for cold caches and sleeping threads:
    # about 1 ms per statement on this machine.) The answers are compared
    # afterwards, statement by statement.
    times = {}  # (query, engine) -> [ms]
    differences = []
    by_type = {}
    for s in statements:
        by_type.setdefault(s["query"], []).append(s)
    for query, group in by_type.items():
        results = {}
        for e in engines:
            e.run(group[0]["sql"])  # warm-up, not counted
            out = results[e.name] = []
            for s in group:
                t = time.perf_counter()
                out.append(e.run(s["sql"]))
                times.setdefault((query, e.name), []).append((time.perf_counter() - t) * 1000)
        for i, s in enumerate(group):
            reference = None
            for e in engines:
                reference = agree(reference, e.name, e.rows(results[e.name][i]), query, s["sql"], differences)

    queries = list(dict.fromkeys(s["query"] for s in statements))
    head = f"{'query':<24}" + "".join(f"{e.name:>17}" for e in engines)
    print(f"median ms per statement ({len(statements)} statements)")
    print(head)
    for q in queries:
        line = f"{q:<24}"
        for e in engines:
            line += f"{statistics.median(times[(q, e.name)]):>17.1f}"
        print(line)
    if differences:
        print(f"{len(differences)} answer(s) differ:")
        for d in differences[:20]:
            print("  " + d)
        sys.exit(1)
    print(f"answers agree in all {len(engines)} engines")


if __name__ == "__main__":
    main()
