"""Interop: the OpenTelemetry Python SDK's span exporters (gRPC with gzip,
and HTTP/protobuf, from PyPI) send the spans of one request that crosses two
services (W3C trace context carried between them) to Tocsin, and the
services' logs go out through the SDK's logging handler with the active
span's ids. `GET /api/v1/trace/{id}` and `tocsin trace` must show spans and
log events as one timeline, nested as the SDK nested them, with the
mailbox's error first."""

import json
import logging
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from peers import BIN, scratch, sql, start_tocsin, wait_for  # noqa: E402

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from grpc import Compression as GrpcCompression


def service(name, span_exporter, grpc_addr):
    """A tracer and a logger of one service, each exporting as it goes."""
    resource = Resource.create({"service.name": name, "host.name": f"{name}-1"})
    tracing = TracerProvider(resource=resource)
    tracing.add_span_processor(SimpleSpanProcessor(span_exporter))
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=grpc_addr, insecure=True)))
    log = logging.getLogger(name)
    log.propagate = False
    log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logs))
    log.setLevel(logging.INFO)
    return tracing, logs, tracing.get_tracer(name), log


def main():
    with scratch("tocsin-otlp-traces-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog:
        proc, grpc_addr, http = start_tocsin(os.path.join(tmp, "data"), tlog)
        procs.append(proc)
        gw_tracing, gw_logs, gw_tracer, gw_log = service(
            "gateway", GrpcSpanExporter(endpoint=grpc_addr, insecure=True, compression=GrpcCompression.Gzip),
            grpc_addr)
        mb_tracing, mb_logs, mb_tracer, mb_log = service(
            "mailbox", HttpSpanExporter(endpoint=f"http://{http}/v1/traces", compression=HttpCompression.Gzip),
            grpc_addr)

        with gw_tracer.start_as_current_span("POST /deposit", kind=SpanKind.SERVER) as root:
            trace_id = format(root.get_span_context().trace_id, "032x")
            gw_log.info("deposit accepted")
            carrier = {}
            with gw_tracer.start_as_current_span("call mailbox", kind=SpanKind.CLIENT):
                inject(carrier)
                time.sleep(0.002)
                # The mailbox service, on the other side of the wire.
                with mb_tracer.start_as_current_span("store message", context=extract(carrier),
                                                     kind=SpanKind.SERVER, attributes={"mailbox": "4711"}) as s:
                    time.sleep(0.002)
                    try:
                        raise OSError("disk full")
                    except OSError as e:
                        s.record_exception(e)
                        s.set_status(Status(StatusCode.ERROR, "disk full"))
                        mb_log.error("write failed: %s", e)
            gw_log.warning("deposit failed, caller told")
        for p in (gw_tracing, mb_tracing, gw_logs, mb_logs):
            assert p.force_flush(10_000), f"{p} did not flush"

        rows = wait_for("3 spans in Tocsin", lambda: (lambda r: r if len(r) == 3 else None)(sql(
            http, "SELECT service, host, name, kind, status, status_message, parent_span_id IS NULL AS root, "
                  "duration_ns, json_get_str(attributes, 'mailbox') AS mailbox, events FROM spans ORDER BY ts")))
        assert [(r["service"], r["host"], r["name"], r["kind"], r["status"], r["root"]) for r in rows] == [
            ("gateway", "gateway-1", "POST /deposit", "server", "unset", True),
            ("gateway", "gateway-1", "call mailbox", "client", "unset", False),
            ("mailbox", "mailbox-1", "store message", "server", "error", False),
        ], rows
        store = rows[2]
        assert store["status_message"] == "disk full" and store["mailbox"] == "4711", store
        events = json.loads(store["events"])
        assert events[0]["name"] == "exception" and events[0]["attributes"]["exception.type"] == "OSError", events
        assert all(r["duration_ns"] > 0 for r in rows), rows

        url = f"http://{http}/api/v1/trace/{trace_id}"
        flow = wait_for("the trace's 3 log events", lambda: (lambda v: v if v["logs"] == 3 else None)(
            json.loads(urllib.request.urlopen(url, timeout=10).read())))
        shape = [(e["type"], e["service"], e["message"], e["depth"]) for e in flow["events"]]
        assert shape == [
            ("span", "gateway", "POST /deposit", 0),
            ("log", "gateway", "deposit accepted", 1),
            ("span", "gateway", "call mailbox", 1),
            ("span", "mailbox", "store message", 2),
            ("log", "mailbox", "write failed: disk full", 3),
            ("log", "gateway", "deposit failed, caller told", 1),
        ], shape
        assert flow["first_error"] == 3, flow
        assert flow["hops"] == ["gateway", "mailbox", "gateway"], flow
        root = flow["events"][0]
        assert abs(flow["duration_ms"] - root["duration_ms"]) < 1e-6, (flow["duration_ms"], root)

        out = subprocess.run([BIN, "trace", trace_id, "--http-addr", http], check=True, capture_output=True,
                             text=True).stdout
        line = next(l for l in out.splitlines() if "store message" in l)
        assert "> store message [server]: disk full" in line and "<-- first error" in line, out
        assert "3 spans, 3 log events" in out and "path: gateway -> mailbox -> gateway" in out, out
        if os.environ.get("SHOW"):
            print(out)
        print(f"ok: OpenTelemetry SDK spans (gRPC gzip, HTTP gzip) and logs of trace {trace_id} are one timeline "
              f"of {len(flow['events'])} entries, {flow['duration_ms']:.1f} ms")


if __name__ == "__main__":
    main()
