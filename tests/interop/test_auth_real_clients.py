"""Interop: a server started with --auth, reached by real clients the way
each already authenticates: the OpenTelemetry SDK's OTLP exporters (gRPC
and HTTP) with an `authorization` header, grpcio with the token in its
metadata, the ADBC Flight SQL driver with
username and password (a token as the password, or a user's password,
through the Flight SQL handshake), and plain HTTP (urllib, as curl) for line protocol v1 (`u`/`p`)
and v2 (`Authorization: Token`). Without a token, or with a token of the
wrong role, nothing gets in."""

import os
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import subprocess  # noqa: E402

import grpc  # noqa: E402
from peers import BIN, create_token, scratch, sql, start_tocsin_with_auth, wait_for  # noqa: E402
from test_grpc_python_and_duckdb import compile_protos  # noqa: E402

import adbc_driver_flightsql.dbapi as flightsql
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


def post(url, body, headers):
    req = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def export(exporter, service):
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
    provider.get_meter("m").create_counter("jobs.done").add(3, {"queue": "q1"})
    provider.force_flush(10_000)
    provider.shutdown()


def count(http, admin, service):
    try:
        return sql(http, f"SELECT count(*) AS n FROM \"jobs.done\" WHERE \"service.name\" = '{service}'", admin)[0]["n"]
    except urllib.error.HTTPError:
        return 0  # the table does not exist yet


def main():
    with scratch("tocsin-auth-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog:
        proc, grpc_addr, http, admin = start_tocsin_with_auth(os.path.join(tmp, "data"), tlog)
        procs.append(proc)
        writer = create_token(http, admin, "writer", "--description", "collectors")
        viewer = create_token(http, admin, "viewer", "--description", "dashboards")

        # curl-style HTTP: no token is 401, a token of the wrong role 403.
        assert post(f"http://{http}/api/v1/sql", '{"sql": "SELECT 1"}', {}) == 401
        assert post(f"http://{http}/api/v2/write?bucket=public", "cpu,host=a v=1",
                    {"Authorization": f"Token {viewer}"}) == 403
        # Line protocol as InfluxDB clients send it: v2 token, v1 u/p.
        assert post(f"http://{http}/api/v2/write?bucket=public&precision=s", "cpu,host=a v=1 1700000000",
                    {"Authorization": f"Token {writer}"}) == 204
        assert post(f"http://{http}/write?db=public&precision=s&u=telegraf&p={writer}", "cpu,host=b v=2 1700000000",
                    {}) == 204
        assert sql(http, "SELECT host, v FROM cpu ORDER BY host", viewer) == [{"host": "a", "v": 1.0},
                                                                               {"host": "b", "v": 2.0}]

        # OpenTelemetry SDK, headers as OTEL_EXPORTER_OTLP_HEADERS would set them.
        auth = {"authorization": f"Bearer {writer}"}
        export(GrpcMetricExporter(endpoint=grpc_addr, insecure=True, headers=auth), "otel-grpc")
        export(HttpMetricExporter(endpoint=f"http://{http}/v1/metrics", headers=auth), "otel-http")
        export(GrpcMetricExporter(endpoint=grpc_addr, insecure=True), "otel-anonymous")
        export(HttpMetricExporter(endpoint=f"http://{http}/v1/metrics",
                                  headers={"authorization": f"Bearer {viewer}"}), "otel-viewer")
        wait_for("OTLP metrics with a token", lambda: count(http, admin, "otel-grpc") >= 1
                 and count(http, admin, "otel-http") >= 1)
        assert count(http, admin, "otel-anonymous") == 0 and count(http, admin, "otel-viewer") == 0

        # ADBC Flight SQL driver: username and password (the handshake).
        with flightsql.connect(f"grpc://{grpc_addr}", db_kwargs={"username": "grafana", "password": viewer}) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM cpu")
            assert cur.fetch_arrow_table().to_pylist() == [{"n": 2}]
        for password in ("tocsin_000000000000_forged", writer):
            try:
                with flightsql.connect(f"grpc://{grpc_addr}",
                                       db_kwargs={"username": "x", "password": password}) as conn, \
                        conn.cursor() as cur:
                    cur.execute("SELECT count(*) AS n FROM cpu")
                    cur.fetch_arrow_table()
                raise AssertionError(f"Flight SQL query accepted with password {password[:20]}...")
            except flightsql.Error as e:
                assert "nauthenticated" in str(e) or "ermission" in str(e), e
        # grpcio (stubs generated from proto/), the token in metadata as any
        # gRPC client sends it.
        os.makedirs(os.path.join(tmp, "stubs"))
        compile_protos(os.path.join(tmp, "stubs"))
        from tocsin.v1 import ingest_pb2 as pb, ingest_pb2_grpc as rpc
        stub = rpc.IngestStub(grpc.insecure_channel(grpc_addr))
        req = pb.WriteRowsRequest(table="grpcio", series=[pb.RowSeries(
            tags=[pb.Label(name="host", value="a")], timestamps=[1_700_000_000_000_000_000],
            fields=[pb.FieldColumn(name="v", f64=pb.DoubleValues(values=[1.5]))])])
        for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                               ([("authorization", f"Bearer {viewer}")], grpc.StatusCode.PERMISSION_DENIED)):
            try:
                stub.WriteRows(req, metadata=metadata)
                raise AssertionError(f"grpcio write accepted with {metadata}")
            except grpc.RpcError as e:
                assert e.code() == code, (e.code(), e.details())
        assert stub.WriteRows(req, metadata=[("authorization", f"Bearer {writer}")]).accepted_rows == 1
        assert sql(http, "SELECT v FROM grpcio", viewer) == [{"v": 1.5}]

        # A person: `tocsin user create` (password on stdin), then ADBC with
        # the user's name and password; a wrong password is refused.
        subprocess.run([BIN, "user", "create", "ann", "--role", "viewer", "--http-addr", http, "--token", admin],
                       input="ann's long password\n", check=True, capture_output=True, text=True)
        with flightsql.connect(f"grpc://{grpc_addr}",
                               db_kwargs={"username": "ann", "password": "ann's long password"}) as conn, \
                conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM cpu")
            assert cur.fetch_arrow_table().to_pylist() == [{"n": 2}]
        try:
            with flightsql.connect(f"grpc://{grpc_addr}", db_kwargs={"username": "ann", "password": "guess"}) as conn, \
                    conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetch_arrow_table()
            raise AssertionError("Flight SQL query accepted with a wrong password")
        except flightsql.Error as e:
            assert "nauthenticated" in str(e), e
        print("ok: --auth with real clients: OTel SDK (gRPC, HTTP) headers, ADBC username/password handshake "
              "(token and user password), grpcio metadata, "
              "line protocol v1 u/p and v2 Token; anonymous and wrong-role requests refused")


if __name__ == "__main__":
    main()
