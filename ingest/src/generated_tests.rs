//! Generated-input tests of every decoder reachable from the network:
//! remote_write (snappy + protobuf), OTLP metrics, logs and traces (protobuf and
//! JSON), our gRPC write messages, line protocol, Loki pushes (protobuf and
//! JSON), syslog messages and frames, and the live-tail text filter. Each
//! mutates valid seed inputs for `generated::cases(..)` rounds: every input
//! decodes or is refused, none panics. `TOCSIN_FUZZ_CASES=1000000` makes the
//! long run recorded in docs/security.md.

use prost::Message;
use tocsin_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
use tocsin_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use tocsin_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use tocsin_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tocsin_proto::opentelemetry::proto::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
    number_data_point,
};
use tocsin_proto::opentelemetry::proto::resource::v1::Resource;
use tocsin_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
use tocsin_proto::v1::{
    BoolValues, DoubleValues, FieldColumn, LogEvent, RowSeries, Series, StringValues, WriteLogsRequest,
    WriteRowsRequest, WriteSeriesRequest, field_column,
};
use tocsin_storage::WriteLimits;
use tocsin_storage::generated::{Inputs, cases};

use crate::{convert, line, otlp, prom};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }) }
}

/// Runs `check` on `cases` mutations of each seed.
fn mutated(seeds: &[Vec<u8>], seed: u64, default_cases: usize, mut check: impl FnMut(&[u8])) {
    let mut g = Inputs::new(seed);
    let mut buf = Vec::new();
    for seed in seeds {
        check(seed);
    }
    for _ in 0..cases(default_cases) {
        let s = &seeds[g.below(seeds.len())];
        g.mutate(s, &mut buf);
        check(&buf);
    }
}

#[test]
fn remote_write_bodies_never_panic() {
    let req = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![
                Label { name: "__name__".into(), value: "up".into() },
                Label { name: "job".into(), value: "node".into() },
            ],
            samples: vec![
                Sample { value: 1.0, timestamp: 1_700_000_000_000 },
                Sample { value: f64::NAN, timestamp: 2 },
            ],
        }],
        metadata: vec![],
    };
    let proto = req.encode_to_vec();
    let snappy = snap::raw::Encoder::new().compress_vec(&proto).expect("snappy");
    // Mutate the compressed body, and the protobuf under valid compression
    // (so that mutations reach the protobuf decoder too).
    mutated(&[snappy], 1, 20_000, |body| {
        let _ = prom::decode(body, 1 << 20);
    });
    mutated(&[proto], 2, 20_000, |raw| {
        let body = snap::raw::Encoder::new().compress_vec(raw).expect("snappy");
        let _ = prom::decode(&body, 1 << 20);
    });
}

#[test]
fn otlp_requests_never_panic() {
    let point = NumberDataPoint {
        attributes: vec![kv("queue", "q1")],
        time_unix_nano: 1_700_000_000_000_000_000,
        value: Some(number_data_point::Value::AsDouble(2.5)),
        ..Default::default()
    };
    let hist = HistogramDataPoint {
        time_unix_nano: 5,
        count: 3,
        sum: Some(1.5),
        bucket_counts: vec![1, 1, 1],
        explicit_bounds: vec![0.1, 1.0],
        ..Default::default()
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", "shop")], dropped_attributes_count: 0 }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "g".into(),
                        data: Some(metric::Data::Gauge(Gauge { data_points: vec![point] })),
                        ..Default::default()
                    },
                    Metric {
                        name: "h".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![hist],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    mutated(&[metrics.encode_to_vec()], 3, 20_000, |b| {
        if let Ok(req) = ExportMetricsServiceRequest::decode(b) {
            let _ = otlp::metrics_to_writes(req);
        }
    });
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource { attributes: vec![kv("service.name", "billing")], dropped_attributes_count: 0 }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: 7,
                    severity_number: 13,
                    body: Some(AnyValue { value: Some(any_value::Value::StringValue("card declined".into())) }),
                    attributes: vec![kv("order", "o-1")],
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    mutated(&[logs.encode_to_vec()], 4, 20_000, |b| {
        if let Ok(req) = ExportLogsServiceRequest::decode(b) {
            let _ = otlp::logs_to_events(req, 1);
        }
    });
}

#[test]
fn otlp_trace_exports_never_panic() {
    use tocsin_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
    use tocsin_proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
    let spans = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", "gateway")], dropped_attributes_count: 0 }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    parent_span_id: vec![3; 8],
                    name: "POST /call".into(),
                    kind: 2,
                    start_time_unix_nano: 1_700_000_000_000_000_000,
                    end_time_unix_nano: 1_700_000_000_100_000_000,
                    attributes: vec![kv("http.method", "POST")],
                    events: vec![span::Event { time_unix_nano: 5, name: "exception".into(), ..Default::default() }],
                    links: vec![span::Link { trace_id: vec![4; 16], span_id: vec![5; 8], ..Default::default() }],
                    status: Some(Status { message: "boom".into(), code: 2 }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let limits = WriteLimits::default();
    let seed = spans.encode_to_vec();
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"gw"}}]},
      "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
      "parentSpanId":"eee19b7ec3c1b173","name":"a","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2",
      "events":[{"timeUnixNano":"1","name":"e"}],"status":{"code":2,"message":"m"}}]}]}]}"#
        .to_vec();
    let decoded: ExportTraceServiceRequest =
        crate::otlp_json::decode("opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest", &json)
            .expect("the JSON seed decodes");
    assert_eq!(crate::otlp_trace::spans_to_write(decoded, &limits).write.blocks.len(), 1);
    mutated(&[seed], 15, 20_000, |b| {
        if let Ok(req) = ExportTraceServiceRequest::decode(b) {
            let _ = crate::otlp_trace::spans_to_write(req, &limits);
        }
    });
    mutated(&[json], 16, 5_000, |b| {
        let decoded: Result<ExportTraceServiceRequest, _> =
            crate::otlp_json::decode("opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest", b);
        if let Ok(req) = decoded {
            let _ = crate::otlp_trace::spans_to_write(req, &limits);
        }
    });
}

#[test]
fn grpc_write_messages_never_panic() {
    let rows = WriteRowsRequest {
        database: String::new(),
        table: "cpu".into(),
        series: vec![RowSeries {
            tags: vec![tocsin_proto::v1::Label { name: "host".into(), value: "a".into() }],
            timestamps: vec![1, 2],
            fields: vec![
                FieldColumn {
                    name: "v".into(),
                    values: Some(field_column::Values::F64(DoubleValues { values: vec![1.0, 2.0] })),
                },
                FieldColumn {
                    name: "ok".into(),
                    values: Some(field_column::Values::Bool(BoolValues { values: vec![true, false] })),
                },
                FieldColumn {
                    name: "s".into(),
                    values: Some(field_column::Values::Str(StringValues { values: vec!["x".into(), "y".into()] })),
                },
            ],
        }],
    };
    let series = WriteSeriesRequest {
        database: String::new(),
        series: vec![Series {
            metric: "up".into(),
            labels: vec![tocsin_proto::v1::Label { name: "job".into(), value: "n".into() }],
            timestamps: vec![1],
            values: vec![1.0],
        }],
    };
    let logs = WriteLogsRequest {
        database: String::new(),
        stream: String::new(),
        events: vec![LogEvent {
            timestamp: 1,
            service: "api".into(),
            host: "h".into(),
            level: "WARN".into(),
            message: "m".into(),
            trace_id: "t".into(),
            span_id: String::new(),
            attributes: vec![tocsin_proto::v1::Label { name: "k".into(), value: "v".into() }],
        }],
    };
    mutated(&[rows.encode_to_vec()], 5, 20_000, |b| {
        if let Ok(req) = WriteRowsRequest::decode(b) {
            let _ = convert::rows_to_write(req);
        }
    });
    mutated(&[series.encode_to_vec()], 6, 20_000, |b| {
        if let Ok(req) = WriteSeriesRequest::decode(b) {
            let _ = convert::series_to_writes(req);
        }
    });
    mutated(&[logs.encode_to_vec()], 7, 20_000, |b| {
        if let Ok(req) = WriteLogsRequest::decode(b) {
            let _ = convert::logs_to_write(req, 1 << 16, &WriteLimits::default());
        }
    });
}

#[test]
fn line_protocol_bodies_never_panic() {
    let seeds: Vec<Vec<u8>> = [
        "cpu,host=a,region=eu usage=0.5,idle=99i,ok=true,msg=\"a \\\"b\\\"\" 1700000000000000000\n",
        "my\\ m\\,x,t\\ k=v\\,l\\=e f\\=k=\"s\",g=1u 5\nm v=1 6\n# comment\n\nm v=-1.5e3 7",
        "m,t=a v=1i 1\nm,t=a v=2.5 2\nm,t=a v=3i 3",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let limits = WriteLimits::default();
    mutated(&seeds, 8, 50_000, |b| {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = line::parse(text, line::Precision::Nanoseconds, 0, &limits);
        }
    });
}

#[test]
fn syslog_messages_and_frames_never_panic() {
    let seeds: Vec<Vec<u8>> = [
        &br#"<165>1 2003-10-11T22:14:15.003Z mymachine evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="App\"l\]"][p@1 class="high"] An event"#[..],
        b"<38>Dec  5 19:59:58 gw1 sshd[4242]: Accepted publickey",
        b"<30>2025-12-05T20:00:00.5+01:00 web01 nginx: up",
        b"<13>cron: job done",
        b"61 <13>1 - - - - - - framed\n<13>next line\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    mutated(&seeds, 9, 20_000, |b| {
        let _ = crate::syslog::parse(b, "peer", 1_764_964_800_000_000_000);
        let mut pos = 0;
        while let Ok(crate::syslog::Frame::Message { start, end, consumed }) = crate::syslog::next_frame(&b[pos..], 64)
        {
            assert!(start <= end && end <= consumed && pos + consumed <= b.len(), "frame inside the buffer");
            let _ = crate::syslog::parse(&b[pos + start..pos + end], "peer", 0);
            pos += consumed;
        }
    });
}

#[test]
fn loki_pushes_never_panic() {
    use tocsin_proto::loki::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};
    let req = PushRequest {
        streams: vec![StreamAdapter {
            labels: br#"{job="varlogs", host="a \"b\"", level="warn"}"#.to_vec(),
            entries: vec![EntryAdapter {
                timestamp: Some(Timestamp { seconds: 1_700_000_000, nanos: 1 }),
                line: b"line".to_vec(),
                structured_metadata: vec![LabelPairAdapter { name: b"k".to_vec(), value: b"v".to_vec() }],
            }],
            hash: 7,
        }],
    };
    mutated(&[req.encode_to_vec()], 10, 20_000, |raw| {
        let body = snap::raw::Encoder::new().compress_vec(raw).expect("snappy");
        let _ = crate::loki::from_protobuf(&body, 1 << 20, 0);
    });
    let json = br#"{"streams":[{"stream":{"app":"a","host":"h"},"values":[["1700000000000000000","x"],["1","y",{"k":"v"}]]}]}"#;
    mutated(&[json.to_vec()], 11, 20_000, |b| {
        let _ = crate::loki::from_json(b, 0);
    });
    mutated(&[br#"{a="b", c="d\"e"}"#.to_vec()], 12, 20_000, |b| {
        let _ = crate::loki::parse_labels(&String::from_utf8_lossy(b));
    });
}

#[test]
fn otlp_json_bodies_never_panic() {
    use tocsin_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest as Logs;
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest as Metrics;
    let logs = br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"s"}}]},"scopeLogs":[{"logRecords":[{"timeUnixNano":"1700000000000000000","severityNumber":9,"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","body":{"kvlistValue":{"values":[{"key":"k","value":{"arrayValue":{"values":[{"intValue":"1"},{"doubleValue":1.5},{"bytesValue":"AAE="}]}}}]}}}]}]}]}"#;
    let metrics = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"g","gauge":{"dataPoints":[{"asDouble":2.5,"timeUnixNano":"1"}]}},{"name":"h","histogram":{"aggregationTemporality":2,"dataPoints":[{"count":"3","sum":1.5,"bucketCounts":["1","2"],"explicitBounds":[0.5]}]}}]}]}]}"#;
    mutated(&[logs.to_vec()], 13, 20_000, |b| {
        if let Ok(req) =
            crate::otlp_json::decode::<Logs>("opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest", b)
        {
            let _ = otlp::logs_to_events(req, 0);
        }
    });
    mutated(&[metrics.to_vec()], 14, 20_000, |b| {
        if let Ok(req) = crate::otlp_json::decode::<Metrics>(
            "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest",
            b,
        ) {
            let _ = otlp::metrics_to_writes(req);
        }
    });
}
