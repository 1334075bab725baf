"""Interop: the OpenTelemetry Python SDK's OTLP exporters (gRPC and
HTTP/protobuf, from PyPI) send metrics (counter, up-down counter, gauge,
histogram) and logs (with the trace id of the active span) to Tocsin; SQL
must read back exactly what the SDK recorded."""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peers import scratch, sql, start_tocsin, wait_for  # noqa: E402

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

DURATIONS = [0.003, 0.02, 0.02, 0.3, 1.7, 12.0]
RTTS = [0.0031, 0.0047, 0.021, 0.33, 0.33, 1.9, 7.1]


def record_metrics(exporter, service):
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    # `rtt` is an exponential histogram (the SDK picks the scale).
    provider = MeterProvider(resource=Resource.create({"service.name": service, "host.name": "node-1"}),
                             metric_readers=[reader],
                             views=[View(instrument_name="rtt", aggregation=ExponentialBucketHistogramAggregation())])
    meter = provider.get_meter("shop.checkout")
    orders = meter.create_counter("orders.placed", unit="1")
    for region, n in (("eu", 3), ("us", 5), ("eu", 4)):
        orders.add(n, {"region": region})
    queue = meter.create_up_down_counter("queue.depth")
    queue.add(10, {"queue": "q1"})
    queue.add(-4, {"queue": "q1"})
    meter.create_observable_gauge("cpu.temperature", callbacks=[lambda _o: [Observation(61.5, {"core": "0"})]])
    duration = meter.create_histogram("checkout.duration", unit="s")
    for d in DURATIONS:
        duration.record(d, {"method": "card"})
    rtt = meter.create_histogram("rtt", unit="s")
    for r in RTTS:
        rtt.record(r, {"peer": "eu"})
    assert provider.force_flush(10_000), "metrics export failed"
    provider.shutdown()


def latest(http, table, cols, where):
    """The newest row per series (a flush and the shutdown both export the
    cumulative state)."""
    tags = ", ".join(f'"{c}"' for c in cols)
    return sql(http, f'SELECT DISTINCT ON ({tags}) * FROM "{table}" WHERE {where} ORDER BY {tags}, ts DESC')


def check_metrics(http, service):
    where = f"\"service.name\" = '{service}'"
    rows = latest(http, "orders.placed", ["region"], where)
    assert [(r["region"], r["value"]) for r in rows] == [("eu", 7.0), ("us", 5.0)], rows
    rows = latest(http, "queue.depth", ["queue"], where)
    assert [(r["queue"], r["value"]) for r in rows] == [("q1", 6.0)], rows
    rows = latest(http, "cpu.temperature", ["core"], where)
    assert [(r["core"], r["value"], r["host.name"]) for r in rows] == [("0", 61.5, "node-1")], rows
    count = latest(http, "checkout.duration_count", ["method"], where)
    total = latest(http, "checkout.duration_sum", ["method"], where)
    assert [(r["method"], r["value"]) for r in count] == [("card", float(len(DURATIONS)))], count
    assert abs(total[0]["value"] - sum(DURATIONS)) < 1e-9, total
    buckets = latest(http, "checkout.duration_bucket", ["le"], where)
    by_le = {r["le"]: r["value"] for r in buckets}
    # Cumulative counts at the SDK's default bounds (0, 5, 10, 25, ... ms-style numbers in seconds here).
    for le, v in by_le.items():
        bound = float("inf") if le == "+Inf" else float(le)
        assert v == float(sum(1 for d in DURATIONS if d <= bound)), (le, v, by_le)
    assert by_le["+Inf"] == float(len(DURATIONS)), by_le
    # The exponential histogram: cumulative counts at each bucket's upper bound.
    count = latest(http, "rtt_count", ["peer"], where)
    total = latest(http, "rtt_sum", ["peer"], where)
    assert [(r["peer"], r["value"]) for r in count] == [("eu", float(len(RTTS)))], count
    assert abs(total[0]["value"] - sum(RTTS)) < 1e-9, total
    buckets = latest(http, "rtt_bucket", ["le"], where)
    by_le = {r["le"]: r["value"] for r in buckets}
    assert len(by_le) > 3 and by_le["+Inf"] == float(len(RTTS)), by_le
    for le, v in by_le.items():
        bound = float("inf") if le == "+Inf" else float(le)
        assert v == float(sum(1 for r in RTTS if r <= bound)), (le, v, sorted(by_le.items(), key=lambda x: float(x[0])))


def main():
    with scratch("tocsin-otlp-") as (tmp, procs), open(os.path.join(tmp, "tocsin.log"), "w") as tlog:
        proc, grpc_addr, http = start_tocsin(os.path.join(tmp, "data"), tlog)
        procs.append(proc)
        record_metrics(GrpcMetricExporter(endpoint=grpc_addr, insecure=True), "shop-grpc")
        record_metrics(HttpMetricExporter(endpoint=f"http://{http}/v1/metrics"), "shop-http")
        check_metrics(http, "shop-grpc")
        check_metrics(http, "shop-http")

        # Logs through Python's logging, inside a span.
        tracer = TracerProvider().get_tracer("shop")
        logs = LoggerProvider(resource=Resource.create({"service.name": "billing", "host.name": "node-2"}))
        logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=grpc_addr, insecure=True)))
        log = logging.getLogger("billing")
        log.propagate = False
        log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logs))
        log.setLevel(logging.INFO)
        with tracer.start_as_current_span("charge") as span:
            log.error("card declined for order %s", "o-17", extra={"order_id": "o-17"})
            trace_id = format(span.get_span_context().trace_id, "032x")
        log.info("retry scheduled")
        assert logs.force_flush(10_000), "logs export failed"
        rows = wait_for("log records in Tocsin", lambda: sql(
            http, "SELECT service, host, level, message, trace_id, json_get_str(attributes, 'order_id') AS o "
                  "FROM logs ORDER BY ts"))
        assert [(r["service"], r["host"], r["level"], r["message"]) for r in rows] == [
            ("billing", "node-2", "error", "card declined for order o-17"),
            ("billing", "node-2", "info", "retry scheduled")], rows
        assert rows[0]["trace_id"] == trace_id and rows[0]["o"] == "o-17", rows[0]
        print("ok: OpenTelemetry SDK -> Tocsin over OTLP gRPC and HTTP: counter, up-down counter, gauge, "
              "histogram (bucket/count/sum), exponential histogram and logs with trace ids read back exactly")


if __name__ == "__main__":
    main()
