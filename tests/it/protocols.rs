//! Prometheus remote_write and InfluxDB line protocol over HTTP, through the
//! real binary: what is written is what SQL reads, and bad input gets the
//! answer those protocols' clients expect.

use std::io::Write;

use prost::Message;
use serde_json::Value;
use tocsin_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

use crate::server::TestServer;

async fn post(server: &TestServer, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().post(format!("http://{}{path}", server.http)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("post");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn prom_body(series: Vec<TimeSeries>) -> Vec<u8> {
    let req = WriteRequest { timeseries: series, metadata: vec![] };
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("snappy")
}

fn ts(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> TimeSeries {
    TimeSeries {
        labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
        samples: samples.iter().map(|&(value, timestamp)| Sample { value, timestamp }).collect(),
    }
}

const PROM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

#[tokio::test]
async fn remote_write_series_are_rows_of_their_metric_table() {
    let server = TestServer::start();
    let body = prom_body(vec![
        ts(
            &[("__name__", "node_load1"), ("instance", "a:9100"), ("job", "node")],
            &[(0.5, 1_700_000_000_000), (0.75, 1_700_000_015_000)],
        ),
        ts(&[("__name__", "node_load1"), ("instance", "b:9100"), ("job", "node")], &[(2.0, 1_700_000_000_000)]),
        ts(&[("__name__", "up"), ("instance", "a:9100"), ("job", "node")], &[(1.0, 1_700_000_000_000)]),
    ]);
    let (status, text) = post(&server, "/api/v1/write", body, &PROM_HEADERS).await;
    assert_eq!(status, 204, "{text}");
    let rows =
        server.sql("SELECT instance, job, CAST(ts AS BIGINT) AS t, value FROM node_load1 ORDER BY instance, ts").await;
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"instance": "a:9100", "job": "node", "t": 1_700_000_000_000_000_000i64, "value": 0.5}),
            serde_json::json!({"instance": "a:9100", "job": "node", "t": 1_700_000_015_000_000_000i64, "value": 0.75}),
            serde_json::json!({"instance": "b:9100", "job": "node", "t": 1_700_000_000_000_000_000i64, "value": 2.0}),
        ]
    );
    assert_eq!(server.sql("SELECT value FROM up").await, vec![serde_json::json!({"value": 1.0})]);
    // Another database with ?db=.
    let body = prom_body(vec![ts(&[("__name__", "up"), ("instance", "z")], &[(0.0, 1_700_000_000_000)])]);
    assert_eq!(post(&server, "/api/v1/write?db=edge", body, &PROM_HEADERS).await.0, 204);
    assert_eq!(server.sql("SELECT instance FROM edge.up").await, vec![serde_json::json!({"instance": "z"})]);
}

#[tokio::test]
async fn remote_write_bad_input_is_a_400_that_names_the_problem() {
    let server = TestServer::start();
    let (status, text) = post(&server, "/api/v1/write", b"plain text".to_vec(), &PROM_HEADERS).await;
    assert_eq!(status, 400);
    assert!(text.contains("snappy") || text.contains("WriteRequest"), "{text}");
    // A series without a name is dropped, the rest is stored.
    let body = prom_body(vec![
        ts(&[("instance", "a")], &[(1.0, 1_700_000_000_000)]),
        ts(&[("__name__", "ok_metric")], &[(3.0, 1_700_000_000_000)]),
    ]);
    let (status, text) = post(&server, "/api/v1/write", body, &PROM_HEADERS).await;
    assert_eq!(status, 400);
    assert!(text.contains("no __name__") && text.contains("dropped=1"), "{text}");
    assert_eq!(server.sql("SELECT value FROM ok_metric").await, vec![serde_json::json!({"value": 3.0})]);
}

fn gzip(text: &str) -> Vec<u8> {
    gzip_bytes(text.as_bytes())
}

#[tokio::test]
async fn line_protocol_v1_and_v2_with_every_field_type_gzip_and_precision() {
    let server = TestServer::start();
    // TSBS' cpu line shape, v2 endpoint, seconds, gzip.
    let tsbs = "cpu,hostname=host_0,region=eu-west-1,datacenter=eu-west-1a usage_user=58i,usage_system=2i 1451606400\n\
                cpu,hostname=host_1,region=eu-west-1,datacenter=eu-west-1b usage_user=12i,usage_system=9i 1451606400\n\
                cpu,hostname=host_0,region=eu-west-1,datacenter=eu-west-1a usage_user=60i,usage_system=3i 1451606410\n";
    let (status, text) =
        post(&server, "/api/v2/write?org=o&bucket=tsbs&precision=s", gzip(tsbs), &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 204, "{text}");
    let rows =
        server.sql("SELECT hostname, CAST(ts AS BIGINT) AS t, usage_user FROM tsbs.cpu ORDER BY hostname, ts").await;
    let want: Vec<Value> =
        [("host_0", 1_451_606_400i64, 58), ("host_0", 1_451_606_410, 60), ("host_1", 1_451_606_400, 12)]
            .iter()
            .map(|(h, t, u)| serde_json::json!({"hostname": h, "t": t * 1_000_000_000, "usage_user": u}))
            .collect();
    assert_eq!(rows, want);
    // Telegraf-style, v1 endpoint, milliseconds, every field type and escapes.
    let telegraf =
        "system,host=web\\ 1 load1=0.25,n_users=3i,uptime=1200u,up=true,status=\"ok, \\\"fine\\\"\" 1700000000123\n";
    let (status, text) = post(&server, "/write?db=tg&precision=ms", telegraf.as_bytes().to_vec(), &[]).await;
    assert_eq!(status, 204, "{text}");
    let rows = server
        .sql("SELECT host, CAST(ts AS BIGINT) AS t, load1, n_users, uptime, up, status, arrow_typeof(uptime) AS ut FROM tg.system")
        .await;
    assert_eq!(
        rows,
        vec![serde_json::json!({
            "host": "web 1", "t": 1_700_000_000_123_000_000i64, "load1": 0.25, "n_users": 3, "uptime": 1200,
            "up": true, "status": "ok, \"fine\"", "ut": "UInt64"
        })]
    );
}

#[tokio::test]
async fn line_protocol_errors_name_the_line_and_partial_writes_keep_the_good_points() {
    let server = TestServer::start();
    let (status, text) = post(&server, "/write?db=e", b"m v=1 1\nm v=oops 2\n".to_vec(), &[]).await;
    assert_eq!(status, 400);
    assert!(text.contains("line 2, column 5") && text.contains("bad float"), "{text}");
    assert_eq!(server.sql_raw("SELECT * FROM e.m").await.0, 400, "a parse error writes nothing");
    // v2 error shape.
    let (status, text) = post(&server, "/api/v2/write?bucket=e", b"m".to_vec(), &[]).await;
    assert_eq!(status, 400);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["code"], "invalid");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("missing fields")), "{text}");
    let (status, _) = post(&server, "/api/v2/write", b"m v=1".to_vec(), &[]).await;
    assert_eq!(status, 400, "v2 needs a bucket");
    let (status, text) = post(&server, "/write?precision=fortnight", b"m v=1".to_vec(), &[]).await;
    assert_eq!((status, text.contains("unknown precision")), (400, true), "{text}");
    // A type conflict with the stored table drops that point only.
    assert_eq!(post(&server, "/write?db=e", b"t,h=a v=1i 1".to_vec(), &[]).await.0, 204);
    let (status, text) = post(&server, "/write?db=e", b"t,h=b v=2i 2\nt,h=c v=2.5 3\n".to_vec(), &[]).await;
    assert_eq!(status, 400);
    assert!(text.contains("partial write") && text.contains("dropped=1"), "{text}");
    let rows = server.sql("SELECT h, v FROM e.t ORDER BY h").await;
    assert_eq!(rows, vec![serde_json::json!({"h": "a", "v": 1}), serde_json::json!({"h": "b", "v": 2})]);
    // A gzip bomb is refused by its decompressed size.
    let bomb = gzip(&"m v=1 1\n".repeat(20_000_000));
    let (status, text) = post(&server, "/write?db=e", bomb, &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 413, "{text}");
    let (status, _) = post(&server, "/write?db=e", b"\x1f\x8b garbage".to_vec(), &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn zstd_bodies_are_read_within_the_size_bound_and_unknown_encodings_are_named() {
    let server = TestServer::start();
    let zstd = |raw: &[u8]| zstd::bulk::compress(raw, 3).expect("zstd");
    let (status, text) =
        post(&server, "/write?db=z", zstd(b"m,h=a v=1 1\nm,h=b v=2 2\n"), &[("content-encoding", "zstd")]).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(server.sql("SELECT h, v FROM z.m ORDER BY h").await.len(), 2);
    // A zstd bomb (about 160 MB from a few kB) is refused by what it decompresses to.
    let before = server.metric("tocsin_limit_refusals_total{limit=\"max_request_bytes\"}").await;
    let bomb = zstd(&b"m v=1 1\n".repeat(20_000_000));
    assert!(bomb.len() < 100_000, "the bomb is small on the wire: {}", bomb.len());
    let (status, text) = post(&server, "/write?db=z", bomb, &[("content-encoding", "zstd")]).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("decompressed body is over the limit"), "{text}");
    assert!(server.metric("tocsin_limit_refusals_total{limit=\"max_request_bytes\"}").await > before);
    let (status, text) =
        post(&server, "/write?db=z", b"not zstd at all".to_vec(), &[("content-encoding", "zstd")]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("zstd"), "{text}");
    // An encoding we do not read is named, not parsed as line protocol.
    let (status, text) =
        post(&server, "/api/v2/write?bucket=z", b"m v=3 3".to_vec(), &[("content-encoding", "br")]).await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("Content-Encoding") && text.contains("br"), "{text}");
    let (status, text) = post(&server, "/v1/metrics", vec![], &[("content-encoding", "deflate")]).await;
    assert_eq!(status, 415, "{text}");
    // Remote_write is snappy; a gzip-declared body is refused by name.
    let (status, text) = post(&server, "/api/v1/write", vec![1, 2, 3], &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("snappy"), "{text}");
    // So is a compressed SQL statement (it would only fail as bad JSON).
    let sql = zstd(br#"{"sql": "SELECT 1"}"#);
    let (status, text) =
        post(&server, "/api/v1/sql", sql, &[("content-encoding", "zstd"), ("content-type", "application/json")]).await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("Content-Encoding") && text.contains("zstd"), "{text}");
    assert_eq!(server.sql("SELECT h FROM z.m").await.len(), 2, "nothing else was written");
}

#[tokio::test]
async fn otlp_partial_success_and_bad_bodies() {
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    };
    use tocsin_proto::opentelemetry::proto::metrics::v1::{
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric, NumberDataPoint, ResourceMetrics,
        ScopeMetrics, metric, number_data_point,
    };
    let server = TestServer::start();
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                scope: None,
                metrics: vec![
                    Metric {
                        name: "temp".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: 1_700_000_000_000_000_000,
                                value: Some(number_data_point::Value::AsDouble(21.5)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "latency".into(),
                        data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                            // A scale OTLP does not allow.
                            data_points: vec![ExponentialHistogramDataPoint { scale: 30, ..Default::default() }; 2],
                            aggregation_temporality: 2,
                        })),
                        ..Default::default()
                    },
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    // gRPC on the ingest port.
    let mut client = MetricsServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connect");
    let resp = client.export(req.clone()).await.expect("export").into_inner();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_data_points, 2);
    assert!(partial.error_message.contains("scale 30; OTLP allows -10 to 20"), "{partial:?}");
    assert_eq!(server.sql("SELECT value FROM temp").await, vec![serde_json::json!({"value": 21.5})]);
    // HTTP/protobuf, gzip: the same answer, protobuf-encoded.
    let body = gzip_bytes(&req.encode_to_vec());
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/metrics", server.http))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let decoded = ExportMetricsServiceResponse::decode(resp.bytes().await.expect("body")).expect("protobuf answer");
    assert_eq!(decoded.partial_success.map(|p| p.rejected_data_points), Some(2));
    // Garbage and JSON bodies.
    let (status, text) =
        post(&server, "/v1/metrics", vec![0xff; 16], &[("content-type", "application/x-protobuf")]).await;
    assert_eq!(status, 400);
    assert!(text.contains("ExportMetricsServiceRequest"), "{text}");
    // JSON (OTLP/HTTP's other encoding): answered in JSON, camelCase.
    let json = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"j1"}}]},
      "scopeMetrics":[{"metrics":[{"name":"temp","gauge":{"dataPoints":[{"asDouble":22.5,"timeUnixNano":"1700000001000000000"}]}},
      {"name":"latency","exponentialHistogram":{"aggregationTemporality":2,"dataPoints":[{"count":"1","scale":-11}]}}]}]}]}"#;
    let headers = [("content-type", "application/json")];
    let (status, text) = post(&server, "/v1/metrics", json.to_vec(), &headers).await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).expect("a JSON answer");
    assert_eq!(answer["partialSuccess"]["rejectedDataPoints"], "1", "{text}");
    let rows = server.sql("SELECT value FROM temp WHERE \"host.name\" = 'j1'").await;
    assert_eq!(rows, vec![serde_json::json!({"value": 22.5})]);
    let logs = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"1700000000000000000",
      "traceId":"5b8efff798038103d269b633813fc60c","severityText":"ERROR","body":{"stringValue":"from json"}}]}]}]}"#;
    let (status, text) = post(
        &server,
        "/v1/logs",
        gzip_bytes(logs),
        &[("content-type", "application/json"), ("content-encoding", "gzip")],
    )
    .await;
    assert_eq!((status, text.as_str()), (200, "{}"));
    let rows = server.sql("SELECT trace_id, level, message FROM logs").await;
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"trace_id": "5b8efff798038103d269b633813fc60c", "level": "error", "message": "from json"})
        ]
    );
    for (body, why) in [
        (&b"{"[..], "not JSON"),
        (br#"{"resourceLogs":7}"#, "ExportLogsServiceRequest"),
        (br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"zz"}]}]}]}"#, "spanId \"zz\" is not a hex id"),
    ] {
        let (status, text) = post(&server, "/v1/logs", body.to_vec(), &headers).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(why), "{text}");
    }
}

fn gzip_bytes(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

/// The OTel Collector's `otlp` exporter sends gzip unless told otherwise,
/// and every gRPC client can: the ingest and OTLP services read gzip and
/// zstd messages (they answered `UNIMPLEMENTED` "gzip compression not
/// allowed"), bounded by what a message decompresses to, and a client that
/// accepts compressed answers gets them.
#[tokio::test]
async fn grpc_services_read_gzip_and_zstd_within_the_size_bound() {
    use crate::util::{T0, i64s, row_series, rows};
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::ExportMetricsServiceRequest;
    use tocsin_proto::opentelemetry::proto::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use tocsin_proto::opentelemetry::proto::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
    };
    use tonic::codec::CompressionEncoding::{Gzip, Zstd};
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[limits]\nmax_request_bytes = 65536\n").expect("config");
    let server = TestServer::start_in(&tmp.path().join("data"), &["--config", cfg.to_str().expect("utf8")]);

    for (i, encoding) in [Gzip, Zstd].into_iter().enumerate() {
        let mut client = server.client().await.send_compressed(encoding).accept_compressed(encoding);
        let one = rows("cpu", vec![row_series(&[("host", "a")], vec![T0 + i as i64], vec![i64s("v", vec![1])])]);
        let ok = client.write_rows(one).await.unwrap_or_else(|e| panic!("{encoding}: {e:?}"));
        assert_eq!(ok.into_inner().accepted_rows, 1, "{encoding}");
        // 20,000 rows: over 64 KiB once decompressed, a few kB on the wire.
        let n = 20_000;
        let big = rows(
            "cpu",
            vec![row_series(&[("host", "b")], (0..n).map(|t| T0 + t).collect(), vec![i64s("v", vec![1; n as usize])])],
        );
        let err = client.write_rows(big).await.expect_err("over the bound once decompressed");
        assert!(err.message().contains("65536"), "{encoding}: {err:?}");

        let gauge = |name: &str| ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: None,
                scope_metrics: vec![ScopeMetrics {
                    scope: None,
                    metrics: vec![Metric {
                        name: name.into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint {
                                time_unix_nano: T0 as u64,
                                value: Some(number_data_point::Value::AsDouble(21.5)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let mut otlp = MetricsServiceClient::connect(format!("http://{}", server.grpc))
            .await
            .expect("connect")
            .send_compressed(encoding)
            .accept_compressed(encoding);
        otlp.export(gauge(&format!("temp_{i}"))).await.unwrap_or_else(|e| panic!("{encoding}: {e:?}"));
        assert_eq!(server.sql(&format!("SELECT value FROM temp_{i}")).await, vec![serde_json::json!({"value": 21.5})]);
        let err = otlp.export(gauge(&"x".repeat(70_000))).await.expect_err("a name over the bound");
        assert!(err.message().contains("65536"), "{encoding}: {err:?}");
    }
    assert_eq!(server.sql("SELECT count(*) AS n FROM cpu").await, vec![serde_json::json!({"n": 2})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loki_pushes_protobuf_and_json_with_partial_writes_and_bad_bodies() {
    use tocsin_proto::loki::{EntryAdapter, PushRequest, StreamAdapter, Timestamp};
    let s = TestServer::start();
    let entry = |sec: i64, line: &str| EntryAdapter {
        timestamp: Some(Timestamp { seconds: sec, nanos: 0 }),
        line: line.as_bytes().to_vec(),
        structured_metadata: vec![],
    };
    let push = PushRequest {
        streams: vec![
            StreamAdapter {
                labels: br#"{job="varlogs", instance="web1", level="warning"}"#.to_vec(),
                entries: vec![entry(1_700_000_000, "proto one"), entry(1_700_000_001, "proto two")],
                hash: 0,
            },
            StreamAdapter { labels: b"{not a label set".to_vec(), entries: vec![entry(1, "lost")], hash: 0 },
        ],
    };
    let body = snap::raw::Encoder::new().compress_vec(&push.encode_to_vec()).expect("snappy");
    let (status, text) = post(&s, "/loki/api/v1/push", body, &[("content-type", "application/x-protobuf")]).await;
    assert_eq!(status, 400, "the bad stream makes it a partial write: {text}");
    assert!(text.contains("partial write") && text.contains("dropped=1") && text.contains("not a label set"), "{text}");

    let json = br#"{"streams":[{"stream":{"service_name":"api","host":"web2"},"values":[["1700000002000000000","json one",{"trace_id":"t1"}]]}]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let headers = [("content-type", "application/json"), ("content-encoding", "gzip")];
    assert_eq!(post(&s, "/loki/api/v1/push", gz, &headers).await.0, 204);

    let rows =
        s.sql("SELECT CAST(ts AS BIGINT) AS ns, service, host, level, message, attributes FROM logs ORDER BY ts").await;
    let got: Vec<(i64, &str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            let t = |k: &str| r[k].as_str().unwrap_or("");
            (r["ns"].as_i64().unwrap_or(0), t("service"), t("host"), t("level"), t("message"))
        })
        .collect();
    assert_eq!(
        got,
        [
            (1_700_000_000_000_000_000, "varlogs", "web1", "warn", "proto one"),
            (1_700_000_001_000_000_000, "varlogs", "web1", "warn", "proto two"),
            (1_700_000_002_000_000_000, "api", "web2", "", "json one"),
        ]
    );
    assert!(rows[2]["attributes"].as_str().is_some_and(|a| a.contains(r#""trace_id":"t1""#)), "{rows:?}");

    for (body, headers, code, why) in [
        (b"\xff\xff\xff\xff\xff\x01".to_vec(), vec![], 400, "snappy"),
        (b"{\"streams\": 1}".to_vec(), vec![("content-type", "application/json")], 400, "Loki push JSON"),
        (b"x".to_vec(), vec![("content-encoding", "gzip")], 415, "snappy-compressed"),
        // A snappy header that promises 4 GiB.
        (vec![0x80, 0x80, 0x80, 0x80, 0x08], vec![], 413, "over the limit"),
    ] {
        let (status, text) = post(&s, "/loki/api/v1/push", body, &headers).await;
        assert_eq!(status, code, "{why}: {text}");
        assert!(text.contains(why), "{text}");
    }
    assert_eq!(s.sql("SELECT count(*) AS n FROM logs").await[0]["n"], 3, "nothing else was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_items_and_rows() {
    let s = TestServer::start();
    let body = concat!(
        "{\"index\":{\"_index\":\"nginx-2026.12.05\",\"_id\":\"x1\"}}\n",
        "{\"@timestamp\":\"2026-12-05T10:00:00Z\",\"message\":\"GET /\",\"host\":{\"name\":\"lb1\"},\"status\":200}\n",
        "{\"create\":{}}\n",
        "{\"@timestamp\":1764928800000,\"message\":\"from the path's index\",\"level\":\"ERROR\"}\n",
        "{\"delete\":{\"_index\":\"nginx\",\"_id\":\"x1\"}}\n",
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{}/nginx-2026.12.06/_bulk", s.http))
        .header("content-type", "application/x-ndjson")
        .body(gzip_bytes(body.as_bytes()))
        .header("content-encoding", "gzip")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("x-elastic-product").and_then(|v| v.to_str().ok()), Some("Elasticsearch"));
    let answer: Value = resp.json().await.expect("json");
    assert_eq!(answer["errors"], true);
    assert_eq!(answer["items"][0]["index"]["status"], 201);
    assert_eq!(answer["items"][0]["index"]["_id"], "x1");
    assert_eq!(answer["items"][1]["create"]["status"], 201);
    assert_eq!(answer["items"][2]["delete"]["status"], 400);
    let rows = s.sql("SELECT CAST(ts AS BIGINT) AS ns, host, level, message, attributes FROM nginx ORDER BY ts").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["ns"], 1_764_928_800_000_000_000_i64);
    assert_eq!((rows[0]["level"].as_str(), rows[1]["host"].as_str()), (Some("error"), Some("lb1")));
    assert_eq!(rows[1]["attributes"], r#"{"status":"200"}"#);

    let (status, text) = post(&s, "/_bulk", b"{\"index\":{}}\n{\"m\":1}\n{oops\n".to_vec(), &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("line 3"), "{text}");
}

/// Records, points and actions are counted before a body is decoded: a
/// few kilobytes of gzip holding millions of empty records took gigabytes
/// while decoded (hostile review of 2026-12-05).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_with_too_many_records_are_refused_before_decoding() {
    use tocsin_proto::opentelemetry::proto::collector::logs::v1::ExportLogsServiceRequest;
    use tocsin_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let s = TestServer::start();
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs { log_records: vec![LogRecord::default(); 300_000], ..Default::default() }],
            ..Default::default()
        }],
    };
    let headers = [("content-type", "application/x-protobuf"), ("content-encoding", "gzip")];
    let (status, text) = post(&s, "/v1/logs", gzip_bytes(&req.encode_to_vec()), &headers).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("holds 300000 log records"), "{text}");
    let json = format!("{{\"resourceLogs\":[{{\"scopeLogs\":[{{\"logRecords\":[{}{{}}]}}]}}]}}", "{},".repeat(1 << 20));
    let headers = [("content-type", "application/json"), ("content-encoding", "gzip")];
    let (status, text) = post(&s, "/v1/logs", gzip_bytes(json.as_bytes()), &headers).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("JSON objects"), "{text}");
    let bulk = "{\"index\":{\"_index\":\"a\"}}\n{}\n".repeat(20_001);
    let (status, text) = post(&s, "/_bulk", gzip_bytes(bulk.as_bytes()), &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("at most 20000 actions"), "{text}");
    // Concatenated gzip members are one body (the first member alone was read).
    let mut two = gzip_bytes(b"{\"index\":{\"_index\":\"g\"}}\n{\"message\":\"one\"}\n");
    two.extend(gzip_bytes(b"{\"index\":{\"_index\":\"g\"}}\n{\"message\":\"two\"}\n"));
    let (status, text) = post(&s, "/_bulk", two, &[("content-encoding", "gzip")]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(s.sql("SELECT count(*) AS n FROM g").await[0]["n"], 2);
}

/// InfluxDB 1.x's query API as Telegraf, the `influx` CLI and Grafana use
/// it: `CREATE DATABASE` (form body), `SHOW`, `SELECT`, errors in
/// InfluxDB's shape. The side-by-side comparison with InfluxDB itself is
/// in tests/interop/test_influx_line_protocol.py.
#[tokio::test]
async fn influxql_query_api_answers_as_influxdb_does() {
    let s = TestServer::start();
    let ping = reqwest::get(format!("http://{}/ping", s.http)).await.expect("ping");
    assert_eq!(ping.status().as_u16(), 204);
    assert!(ping.headers().get("x-influxdb-version").is_some());
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, text) = post(&s, "/query", b"q=CREATE+DATABASE+%22telegraf%22".to_vec(), &form).await;
    assert_eq!((status, text.as_str()), (200, r#"{"results":[{"statement_id":0}]}"#));
    let get = |q: &str, db: &str| {
        let req = reqwest::Client::new().get(format!("http://{}/query", s.http)).query(&[("q", q), ("db", db)]);
        async move {
            let resp = req.send().await.expect("get");
            (resp.status().as_u16(), resp.json::<Value>().await.expect("json"))
        }
    };
    let (_, v) = get("SHOW DATABASES", "").await;
    assert_eq!(v["results"][0]["series"][0]["values"], serde_json::json!([["telegraf"]]), "{v}");
    let (status, _) =
        post(&s, "/write?db=telegraf", b"cpu,host=a usage=1.5 1000000000\ncpu,host=b usage=3 2000000000".to_vec(), &[])
            .await;
    assert_eq!(status, 204);
    let (status, v) =
        get("SELECT mean(usage) FROM cpu GROUP BY host; SHOW TAG VALUES WITH KEY = host", "telegraf").await;
    assert_eq!(status, 200);
    assert_eq!(
        v["results"][0]["series"][1],
        serde_json::json!({"name": "cpu", "tags": {"host": "b"}, "columns": ["time", "mean"], "values": [["1970-01-01T00:00:00Z", 3.0]]}),
        "{v}"
    );
    assert_eq!(v["results"][1]["series"][0]["values"], serde_json::json!([["host", "a"], ["host", "b"]]), "{v}");
    // Errors: a statement's in its result (HTTP 200), a parse error HTTP 400.
    let (status, v) = get("SELECT usage FROM cpu; DROP DATABASE telegraf", "").await;
    assert_eq!(status, 200);
    assert_eq!(v["results"][0]["error"], "database name required", "{v}");
    assert!(v["results"][1]["error"].as_str().unwrap_or("").contains("append-only"), "{v}");
    let (status, v) = get("SELEC usage FROM cpu", "telegraf").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap_or("").starts_with("error parsing query: found SELEC"), "{v}");
    let (status, v) = get("SELECT usage FROM cpu WHERE time > now() - 10000d GROUP BY time(1s)", "telegraf").await;
    assert_eq!(status, 200);
    assert!(
        v["results"][0]["error"].as_str().unwrap_or("").contains("GROUP BY requires at least one aggregate"),
        "{v}"
    );
    let (status, v) =
        get("SELECT count(usage) FROM cpu WHERE time > now() - 10000d GROUP BY time(1s)", "telegraf").await;
    assert_eq!(status, 200);
    assert!(v["results"][0]["error"].as_str().unwrap_or("").contains("buckets per series"), "{v}");

    // Hostile review: 3,000 nested parentheses overflowed a worker's stack
    // and ended the process; empty buckets filled without a bound took
    // gigabytes.
    let deep = format!("SELECT usage FROM cpu WHERE {}host = 'a'{}", "(".repeat(3000), ")".repeat(3000));
    let (status, v) = get(&deep, "telegraf").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap_or("").contains("nested deeper than 64"), "{v}");
    let bomb =
        "SELECT count(usage) FROM cpu WHERE time >= 1s AND time < 1000090000ns GROUP BY time(1ns) fill(0);".repeat(20);
    let (status, v) = get(&bomb, "telegraf").await;
    assert_eq!(status, 200);
    let errors = v["results"].as_array().expect("results").iter().filter(|r| r["error"].is_string()).count();
    assert!(errors > 0, "the request's points are bounded: {v}");
    assert!(v.to_string().contains("more than 1000000 points"), "{v}");
    let health = reqwest::get(format!("http://{}/health", s.http)).await.expect("health");
    assert_eq!(health.status().as_u16(), 200);
    // Empty buckets count 0; a selection of tags alone shows nothing.
    let (_, v) = get("SELECT count(usage) FROM cpu WHERE time >= 0 AND time < 4s GROUP BY time(1s)", "telegraf").await;
    let values = &v["results"][0]["series"][0]["values"];
    assert_eq!(
        values,
        &serde_json::json!([
            ["1970-01-01T00:00:00Z", 0],
            ["1970-01-01T00:00:01Z", 1],
            ["1970-01-01T00:00:02Z", 1],
            ["1970-01-01T00:00:03Z", 0]
        ]),
        "{v}"
    );
    let (_, v) = get("SELECT host FROM cpu", "telegraf").await;
    assert_eq!(v["results"][0].get("series"), None, "{v}");
}
