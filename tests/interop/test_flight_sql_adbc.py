"""Interop: the ADBC Flight SQL driver and pyarrow (PyPI) against Tocsin's
Arrow Flight SQL on the gRPC port: statement queries, a million-row result
streamed back, prepared statements with parameters, INSERT as an update,
the `database` header Grafana's InfluxDB SQL mode sends, metadata
(catalogs, schemas, tables with Arrow schemas, SQL info), and errors."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from peers import scratch, sql, start_tocsin  # noqa: E402

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa


def connect(grpc_addr, database=None):
    kwargs = {}
    if database:
        # Custom gRPC headers: the driver's "adbc.flight.sql.rpc.call_header.<name>" option.
        kwargs["db_kwargs"] = {f"{adbc_driver_flightsql.DatabaseOptions.RPC_CALL_HEADER_PREFIX.value}database": database}
    return flightsql.connect(f"grpc://{grpc_addr}", **kwargs)


def main():
    with scratch("tocsin-flight-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog:
        proc, grpc_addr, http = start_tocsin(os.path.join(tmp, "data"), tlog)
        procs.append(proc)
        with connect(grpc_addr) as conn, conn.cursor() as cur:
            # INSERT three ways: plain DB-API execute (a prepared
            # statement the driver never reads the result of), a Flight
            # SQL update (DoPut CommandStatementUpdate), and a prepared
            # INSERT with parameters.
            cur.execute("INSERT INTO cpu (ts, host, usage) VALUES (to_timestamp(1700000000), 'a', 1.5)")
            cur.adbc_statement.set_sql_query("INSERT INTO cpu (ts, host, usage) VALUES "
                                              "(to_timestamp(1700000010), 'b', 2.5)")
            assert cur.adbc_statement.execute_update() == 1
            cur.execute("INSERT INTO cpu (ts, host, usage) VALUES (to_timestamp($1), $2, $3)",
                        parameters=(1700000020, "a", 3.5))
            cur.execute("SELECT host, max(usage) AS m, count(*) AS n FROM cpu GROUP BY host ORDER BY host")
            t = cur.fetch_arrow_table()
            assert t.to_pylist() == [{"host": "a", "m": 3.5, "n": 2}, {"host": "b", "m": 2.5, "n": 1}], t

            # A million rows, streamed (generated server-side).
            started = time.time()
            cur.execute("SELECT value AS i, value * 2 AS j FROM generate_series(1, 1000000) AS t(value)")
            reader = cur.fetch_record_batch()
            rows, batches, total = 0, 0, 0
            for batch in reader:
                rows += batch.num_rows
                batches += 1
                total += pa.compute.sum(batch.column(0)).as_py()
            assert rows == 1_000_000 and total == 500_000_500_000, (rows, total)
            assert batches > 1, "the result came as one batch, not streamed"
            print(f"  1,000,000 rows in {batches} batches in {time.time() - started:.2f} s")

            # Prepared statement with parameters, executed twice.
            q = "SELECT host, usage FROM cpu WHERE host = $1 AND usage > $2 ORDER BY usage"
            cur.execute(q, parameters=("a", 2.0))
            assert cur.fetch_arrow_table().to_pylist() == [{"host": "a", "usage": 3.5}]
            cur.execute(q, parameters=("a", 0.0))
            assert [r["usage"] for r in cur.fetch_arrow_table().to_pylist()] == [1.5, 3.5]

            # Parameter rows: executemany runs a prepared INSERT once per
            # row (ints cast to the float field); bind + execute_update too.
            cur.executemany("INSERT INTO cpu (ts, host, usage) VALUES (to_timestamp($1), $2, $3)",
                            [(1700000030, "c", 1), (1700000040, "c", 2), (1700000050, "c", 4)])
            cur.execute("SELECT count(*) AS n, sum(usage) AS s FROM cpu WHERE host = 'c'")
            assert cur.fetch_arrow_table().to_pylist() == [{"n": 3, "s": 7.0}]
            # An untyped placeholder: the schema announced is the one sent.
            cur.execute("SELECT 'x' AS m, $1 AS p", parameters=(5,))
            assert cur.fetch_arrow_table().to_pylist() == [{"m": "x", "p": 5}]

            # Metadata.
            objs = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            catalogs = {c["catalog_name"] for c in objs}
            assert "tocsin" in catalogs, catalogs
            tables = {(s["db_schema_name"], t["table_name"]) for c in objs for s in c["catalog_db_schemas"]
                      for t in (s["db_schema_tables"] or [])}
            assert ("public", "cpu") in tables and ("system", "alerts") in tables, sorted(tables)[:20]
            schema = conn.adbc_get_table_schema("cpu", db_schema_filter="public")
            assert schema.field("usage").type == pa.float64() and schema.field("ts").type.unit == "ns", schema
            info = conn.adbc_get_info()
            assert info.get("vendor_name") == "Tocsin", info

            # Errors reach the client with their message.
            try:
                cur.execute("SELECT nope FROM cpu")
                raise AssertionError("bad SQL accepted")
            except flightsql.Error as e:
                assert "nope" in str(e), e

        # The `database` header selects the database.
        sql(http, "INSERT INTO edge.cpu (ts, host, usage) VALUES (now(), 'edge-1', 9.0)")
        with connect(grpc_addr, database="edge") as conn, conn.cursor() as cur:
            cur.execute("SELECT host, usage FROM cpu")
            assert cur.fetch_arrow_table().to_pylist() == [{"host": "edge-1", "usage": 9.0}]
        print("ok: ADBC Flight SQL driver: queries, 1M-row stream, prepared statements with parameters, "
              "INSERT, database header, metadata and errors")


if __name__ == "__main__":
    main()
