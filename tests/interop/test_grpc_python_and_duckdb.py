"""Interop: a Python gRPC client (grpcio, generated from proto/ by grpc_tools)
writes to Tocsin; DuckDB and pyarrow read Tocsin's Parquet segments directly
and must give the same answers as Tocsin's SQL, and every integer exactly as
written (integer columns are nibble-aligned DELTA_BINARY_PACKED: this checks
that independent Parquet readers decode them)."""

import glob
import os
import random
import sys
import tempfile
import urllib.request

import duckdb
import grpc
import pyarrow.parquet as pq
from grpc_tools import protoc

sys.path.insert(0, os.path.dirname(__file__))
from peers import ROOT, sql, start_tocsin  # noqa: E402
T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000


def compile_protos(out):
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "tocsin", "v1", "ingest.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)


def walk(n, seed):
    """A TSBS-like integer random walk with rare wide jumps (mixed miniblock widths)."""
    rng = random.Random(seed)
    x, out = 50, []
    for i in range(n):
        x = max(0, min(100, x + int(rng.gauss(0, 1))))
        out.append(x if i % 301 else x - 2**40 * (seed + 1))
    return out


def main():
    tmp = tempfile.mkdtemp(prefix="tocsin-interop-")
    compile_protos(tmp)
    from tocsin.v1 import ingest_pb2 as pb, ingest_pb2_grpc as rpc

    data = os.path.join(tmp, "data")
    with open(os.path.join(tmp, "server.log"), "w") as log:
        proc, grpc_addr, http = start_tocsin(data, log)
        try:
            stub = rpc.IngestStub(grpc.insecure_channel(grpc_addr))
            series = []
            for h in range(5):
                n = 720  # two hours at 10 s
                series.append(pb.RowSeries(
                    tags=[pb.Label(name="hostname", value=f"host_{h}"), pb.Label(name="region", value=f"r{h % 2}")],
                    timestamps=[T0 + i * 10 * SEC for i in range(n)],
                    fields=[pb.FieldColumn(name="usage_user", i64=pb.Int64Values(values=walk(n, h))),
                            pb.FieldColumn(name="usage_system", f64=pb.DoubleValues(values=[i / 8 + h for i in range(n)]))]))
            resp = stub.WriteRows(pb.WriteRowsRequest(table="cpu", series=series))
            assert resp.accepted_rows == 5 * 720, resp
            bad = stub.WriteRows(pb.WriteRowsRequest(table="cpu", series=[pb.RowSeries(
                tags=[pb.Label(name="hostname", value="x")], timestamps=[T0],
                fields=[pb.FieldColumn(name="usage_user", f64=pb.DoubleValues(values=[1.5]))])]))
            assert bad.accepted_rows == 0 and "integer" in bad.rejected[0].reason, bad
            try:
                stub.WriteSeries(pb.WriteSeriesRequest())
                raise AssertionError("empty request accepted")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e

            q = ("SELECT hostname, count(*) AS n, max(usage_user) AS mx, sum(usage_system) AS s "
                 "FROM cpu GROUP BY hostname ORDER BY hostname")
            ours = sql(http, q)
            urllib.request.urlopen(urllib.request.Request(f"http://{http}/api/v1/admin/persist", method="POST"), timeout=60)
            assert sql(http, q) == ours, "answers changed after persistence"

            # 3,600 rows: a small table, written into a pack shared with other small tables
            # (docs/storage.md, Packs), whose `__table` column tells outside readers which rows are cpu's.
            assert not glob.glob(os.path.join(data, "segments", "public", "cpu", "*.parquet"))
            files = glob.glob(os.path.join(data, "packs", "public", "*.parquet"))
            assert files, "no pack written"
            src = f"(SELECT * FROM read_parquet({files!r}, union_by_name = true) WHERE __table = 'cpu')"
            duck = duckdb.sql(
                f"SELECT hostname::VARCHAR AS hostname, count(*) AS n, max(usage_user) AS mx, sum(usage_system) AS s "
                f"FROM {src} GROUP BY 1 ORDER BY 1").fetchall()
            ours_t = [(r["hostname"], r["n"], r["mx"], r["s"]) for r in ours]
            assert len(duck) == len(ours_t) == 5, (duck, ours_t)
            for d, o in zip(duck, ours_t):
                # usage_system holds short decimals (i / 8 + h), stored as DECIMAL(18, 3): DuckDB sums
                # exact decimals, Tocsin doubles.
                assert d[0] == o[0] and d[1] == o[1] and d[2] == o[2] and abs(float(d[3]) - o[3]) < 1e-6, (d, o)
            written = sorted((f"host_{h}", T0 + i * 10 * SEC, v) for h in range(5) for i, v in enumerate(walk(720, h)))
            duck_rows = duckdb.sql(f"SELECT hostname::VARCHAR, epoch_ns(ts), usage_user FROM {src} "
                                   "ORDER BY 1, 2").fetchall()
            assert duck_rows == written, "DuckDB decodes different integers than were written"
            table = pq.read_table(files, columns=["hostname", "ts", "usage_user"], filters=[("__table", "==", "cpu")])
            arrow_rows = sorted(zip(table.column("hostname").to_pylist(),
                                    table.column("ts").cast("int64").to_pylist(), table.column("usage_user").to_pylist()))
            assert arrow_rows == written, "pyarrow decodes different integers than were written"
            # Outside readers get the very doubles that were written back from the decimals.
            written_f = sorted((f"host_{h}", T0 + i * 10 * SEC, i / 8 + h) for h in range(5) for i in range(n))
            duck_f = duckdb.sql(f"SELECT hostname::VARCHAR, epoch_ns(ts), usage_system FROM {src} "
                                "WHERE hostname <> 'x' ORDER BY 1, 2").fetchall()
            assert [(h, t, float(v)) for h, t, v in duck_f] == written_f, "DuckDB reads other values"
            table = pq.read_table(files, columns=["usage_system"], filters=[("__table", "==", "cpu")])
            assert str(table.schema.field("usage_system").type) == "decimal64(18, 3)", table.schema
            print(f"interop ok: python gRPC wrote {resp.accepted_rows} rows; DuckDB agrees on {len(files)} packs")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert proc.returncode == 0, f"server exit code {proc.returncode}"


if __name__ == "__main__":
    main()
