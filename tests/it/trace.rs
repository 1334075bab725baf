//! `tocsin trace ID` and `GET /api/v1/trace/{id}`: one flow across services.

use std::process::Command;

use tocsin_proto::v1::WriteLogsRequest;

use crate::server::{BIN, TestServer};
use crate::util::*;

#[tokio::test]
async fn a_flow_is_shown_across_services_in_time_order_with_the_first_error() {
    let server = TestServer::start();
    let mut client = server.client().await;
    const MS: i64 = 1_000_000;
    // Written out of order and interleaved with another flow.
    let events = vec![
        log(T0 + 40 * MS, "billing", "ERROR", "card declined", "order-17"),
        log(T0, "gateway", "INFO", "request accepted", "order-17"),
        log(T0 + 5 * MS, "gateway", "INFO", "other flow", "order-18"),
        log(T0 + 12 * MS, "orders", "info", "order created", "order-17"),
        log(T0 + 90 * MS, "notifier", "error", "sms failed", "order-17"),
        log(T0 + 95 * MS, "gateway", "WARN", "responded 402", "order-17"),
    ];
    let resp = client
        .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events })
        .await
        .expect("write_logs")
        .into_inner();
    assert_eq!(resp.accepted_rows, 6);

    let v: serde_json::Value = reqwest::get(format!("http://{}/api/v1/trace/order-17", server.http))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let services: Vec<&str> =
        v["events"].as_array().unwrap_or_else(|| panic!("{v}")).iter().filter_map(|e| e["service"].as_str()).collect();
    assert_eq!(services, ["gateway", "orders", "billing", "notifier", "gateway"]);
    assert_eq!(v["hops"], serde_json::json!(["gateway", "orders", "billing", "notifier", "gateway"]));
    assert_eq!(v["first_error"], 2, "billing's error is the first");
    assert_eq!(v["events"][2]["since_previous_ms"], 28.0);
    assert_eq!(v["duration_ms"], 95.0);

    let out =
        Command::new(BIN).args(["trace", "order-17", "--http-addr", &server.http.to_string()]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let billing = text.lines().find(|l| l.contains("card declined")).expect("billing line");
    assert!(billing.contains("<-- first error") && billing.contains("+28.0"), "{text}");
    assert!(text.contains("5 events, 95.0 ms, path: gateway -> orders -> billing -> notifier -> gateway"), "{text}");

    // Token search over the same logs.
    let rows = server
        .sql("SELECT service FROM logs WHERE matches(message, 'declined OR (sms AND NOT card)') ORDER BY ts")
        .await;
    assert_eq!(rows, [serde_json::json!({"service": "billing"}), serde_json::json!({"service": "notifier"})]);
    let (status, body) = server.sql_raw("SELECT count(*) FROM logs WHERE matches(message, 'card AND')").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("matches(): cannot parse"), "{body}");

    // Regex and case-insensitive substring search.
    let rows = server
        .sql("SELECT service FROM logs WHERE regexp_like(message, '^(sms|card) (failed|declined)$') ORDER BY ts")
        .await;
    assert_eq!(rows, [serde_json::json!({"service": "billing"}), serde_json::json!({"service": "notifier"})]);
    let rows = server.sql("SELECT service FROM logs WHERE message ILIKE '%CARD DECL%'").await;
    assert_eq!(rows, [serde_json::json!({"service": "billing"})]);

    // Attributes are a JSON object; json_get_str reads a key.
    let rows = server.sql("SELECT count(*) AS n FROM logs WHERE json_get_str(attributes, 'region') = 'eu'").await;
    assert_eq!(rows, [serde_json::json!({"n": 6})]);

    let missing = reqwest::get(format!("http://{}/api/v1/trace/nope", server.http)).await.expect("get");
    assert_eq!(missing.status().as_u16(), 404);
    let bad = reqwest::get(format!("http://{}/api/v1/trace/x'%20OR%20'1", server.http)).await.expect("get");
    assert_eq!(bad.status().as_u16(), 400);
}

/// The probe convention of docs/logs.md: each component that handles a
/// synthetic probe logs one event with the probe's id as trace id and its
/// own processing time in the `probe_ms` attribute.
#[tokio::test]
async fn probe_timings_give_per_component_latency_and_where_a_flow_stopped() {
    use tocsin_proto::v1::{Label, LogEvent};
    let server = TestServer::start();
    let mut client = server.client().await;
    const MS: i64 = 1_000_000;
    let probe = |ts: i64, service: &str, probe: &str, ms: u32| LogEvent {
        timestamp: ts,
        service: service.into(),
        host: "node-1".into(),
        level: "info".into(),
        message: "probe".into(),
        trace_id: probe.into(),
        span_id: String::new(),
        attributes: vec![
            Label { name: "probe".into(), value: "1".into() },
            Label { name: "probe_ms".into(), value: ms.to_string() },
        ],
    };
    let events = vec![
        // p-1 crosses all three components; p-2 stops after billing.
        probe(T0, "gateway", "p-1", 3),
        probe(T0 + 5 * MS, "billing", "p-1", 40),
        probe(T0 + 50 * MS, "notifier", "p-1", 7),
        probe(T0 + 100 * MS, "gateway", "p-2", 5),
        probe(T0 + 110 * MS, "billing", "p-2", 60),
    ];
    client
        .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events })
        .await
        .expect("write_logs");
    let latency = server
        .sql(
            "SELECT service, max(CAST(json_get_str(attributes, 'probe_ms') AS DOUBLE)) AS max_ms, count(*) AS probes \
             FROM logs WHERE json_get_str(attributes, 'probe') = '1' GROUP BY service ORDER BY service",
        )
        .await;
    assert_eq!(
        latency,
        [
            serde_json::json!({"service": "billing", "max_ms": 60.0, "probes": 2}),
            serde_json::json!({"service": "gateway", "max_ms": 5.0, "probes": 2}),
            serde_json::json!({"service": "notifier", "max_ms": 7.0, "probes": 1}),
        ]
    );
    let stopped = server
        .sql(
            "SELECT DISTINCT ON (trace_id) trace_id AS probe, service AS last_component FROM logs \
             WHERE json_get_str(attributes, 'probe') = '1' ORDER BY trace_id, ts DESC",
        )
        .await;
    assert_eq!(
        stopped,
        [
            serde_json::json!({"probe": "p-1", "last_component": "notifier"}),
            serde_json::json!({"probe": "p-2", "last_component": "billing"}),
        ]
    );
}

/// OTLP spans (gRPC and HTTP/JSON) and log events of the same trace are one
/// timeline: spans nested by parent, log events under the span they name,
/// the first error (a span's status or a log level) marked; the timeline
/// outlives a persist and a restart.
#[tokio::test]
async fn spans_and_log_events_of_one_trace_are_one_timeline() {
    use tocsin_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
    use tocsin_proto::opentelemetry::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
    use tocsin_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
    use tocsin_proto::opentelemetry::proto::resource::v1::Resource;
    use tocsin_proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    const MS: u64 = 1_000_000;
    let t0 = T0 as u64;
    let trace = [0x5b_u8; 16];
    let trace_hex = "5b".repeat(16);
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
    };
    let span = |id: u8, parent: u8, name: &str, kind: i32, start: u64, end: u64| Span {
        trace_id: trace.to_vec(),
        span_id: vec![id; 8],
        parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
        name: name.into(),
        kind,
        start_time_unix_nano: t0 + start * MS,
        end_time_unix_nano: t0 + end * MS,
        ..Default::default()
    };
    let resource = |service: &str, spans: Vec<Span>| ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", service), kv("host.name", "h1")],
            dropped_attributes_count: 0,
        }),
        scope_spans: vec![ScopeSpans { scope: None, spans, schema_url: String::new() }],
        schema_url: String::new(),
    };
    let mut store = span(2, 1, "store message", 2, 10, 60);
    store.status = Some(Status { message: "disk full".into(), code: 2 });
    store.attributes = vec![kv("mailbox", "4711")];
    let mut broken = span(9, 0, "broken", 1, 0, 1);
    broken.trace_id = vec![0; 16];
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            resource("gateway", vec![span(1, 0, "POST /call", 2, 0, 100), broken]),
            resource("mailbox", vec![store]),
        ],
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let server = TestServer::start_in(&data_dir, &[]);
    let mut otlp = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connect");
    let resp = otlp.export(req).await.expect("export").into_inner();
    let partial = resp.partial_success.expect("the broken span is refused");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("span \"broken\": trace_id is all zero"), "{partial:?}");

    // OTLP/HTTP JSON, ids in hex as the specification says.
    let json = format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"notifier"}}}}]}},
        "scopeSpans":[{{"scope":{{"name":"sms"}},"spans":[{{"traceId":"{trace_hex}","spanId":"0303030303030303",
        "parentSpanId":"0101010101010101","name":"send sms","kind":3,"startTimeUnixNano":"{}","endTimeUnixNano":"{}",
        "status":{{"code":1}}}}]}}]}}]}}"#,
        t0 + 70 * MS,
        t0 + 80 * MS
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", server.http))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.expect("body"), "{}");
    // The same export as protobuf is refused whole when it is not one.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", server.http))
        .header("content-type", "application/x-protobuf")
        .body(vec![0xff; 9])
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.expect("body").contains("ExportTraceServiceRequest"));

    // Log events of the same trace, naming their spans.
    let mut client = server.client().await;
    let at = |ms: u64| (t0 + ms * MS) as i64;
    let mut answered = log(at(5), "gateway", "info", "call answered", &trace_hex);
    answered.span_id = "01".repeat(8);
    let mut failed = log(at(20), "mailbox", "error", "write failed", &trace_hex);
    failed.span_id = "02".repeat(8);
    client
        .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events: vec![answered, failed] })
        .await
        .expect("write_logs");

    let rows = server
        .sql("SELECT service, name, kind, status, duration_ns, parent_span_id, status_message FROM spans ORDER BY ts")
        .await;
    assert_eq!(
        rows,
        [
            serde_json::json!({"service": "gateway", "name": "POST /call", "kind": "server", "status": "unset",
                "duration_ns": 100_000_000, "parent_span_id": null, "status_message": null}),
            serde_json::json!({"service": "mailbox", "name": "store message", "kind": "server", "status": "error",
                "duration_ns": 50_000_000, "parent_span_id": "01".repeat(8), "status_message": "disk full"}),
            serde_json::json!({"service": "notifier", "name": "send sms", "kind": "client", "status": "ok",
                "duration_ns": 10_000_000, "parent_span_id": "01".repeat(8), "status_message": null}),
        ]
    );
    let rows = server.sql("SELECT json_get_str(attributes, 'mailbox') AS m FROM spans WHERE status = 'error'").await;
    assert_eq!(rows, [serde_json::json!({"m": "4711"})]);

    let check = |v: &serde_json::Value| {
        let shape: Vec<(String, String, u64)> = v["events"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                    e["depth"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        let expected: Vec<(String, String, u64)> = [
            ("span", "POST /call", 0),
            ("log", "call answered", 1),
            ("span", "store message", 1),
            ("log", "write failed", 2),
            ("span", "send sms", 1),
        ]
        .iter()
        .map(|(t, m, d)| (t.to_string(), m.to_string(), *d))
        .collect();
        assert_eq!(shape, expected, "{v}");
        assert_eq!(v["first_error"], 2, "the mailbox span's error comes first: {v}");
        assert_eq!(v["hops"], serde_json::json!(["gateway", "mailbox", "notifier"]));
        assert_eq!((v["spans"].as_u64(), v["logs"].as_u64()), (Some(3), Some(2)));
        assert_eq!(v["duration_ms"], 100.0, "from the first start to the last end");
        assert_eq!(v["events"][2]["duration_ms"], 50.0);
        assert_eq!(v["events"][2]["status_message"], "disk full");
        assert_eq!(v["events"][4]["since_previous_ms"], 50.0);
    };
    let url = format!("http://{}/api/v1/trace/{}", server.http, trace_hex.to_uppercase());
    let v: serde_json::Value = reqwest::get(&url).await.expect("get").json().await.expect("json");
    // Upper-case hex finds the spans and the log events (OTLP ids are stored in lower case).
    assert_eq!((v["spans"].as_u64(), v["logs"].as_u64()), (Some(3), Some(2)), "{v}");
    let v: serde_json::Value = reqwest::get(format!("http://{}/api/v1/trace/{trace_hex}", server.http))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    check(&v);

    server.persist().await;
    drop(server);
    let server = TestServer::start_in(&data_dir, &[]);
    let v: serde_json::Value = reqwest::get(format!("http://{}/api/v1/trace/{trace_hex}", server.http))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    check(&v);

    let out =
        Command::new(BIN).args(["trace", &trace_hex, "--http-addr", &server.http.to_string()]).output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = text.lines().find(|l| l.contains("store message")).unwrap_or_else(|| panic!("{text}"));
    assert!(store.contains("  > store message [server]: disk full") && store.contains("<-- first error"), "{text}");
    assert!(text.lines().any(|l| l.contains("    write failed")), "a log under its span is indented: {text}");
    assert!(text.contains("3 spans, 2 log events, 100.0 ms, path: gateway -> mailbox -> notifier"), "{text}");
}

/// What a hostile review sent: exports that decode to gigabytes are
/// refused on the wire (gRPC and HTTP) before they are decoded; spans
/// without a service, a retried export, and odd parameters leave the
/// timeline working.
#[tokio::test]
async fn hostile_span_exports_are_refused_and_odd_lookups_answer() {
    use prost::Message;
    use tocsin_proto::opentelemetry::proto::collector::trace::v1::ExportTraceServiceRequest;
    use tocsin_proto::opentelemetry::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
    use tocsin_proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
    let export = |spans: Vec<Span>| ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans { scope: None, spans, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    };
    let server = TestServer::start();
    let mut otlp = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.expect("connect");

    // 300,000 empty spans: 600 KB on the wire, 60 MB decoded.
    let err = otlp.export(export(vec![Span::default(); 300_000])).await.expect_err("too many spans");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("holds 300000 spans; at most 262144"), "{err:?}");
    // One span with 1,100,000 empty events.
    let chatty = Span { events: vec![span::Event::default(); 1_100_000], ..Default::default() };
    let err = otlp.export(export(vec![chatty.clone()])).await.expect_err("too many events");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("nested messages"), "{err:?}");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", server.http))
        .header("content-type", "application/x-protobuf")
        .body(export(vec![chatty]).encode_to_vec())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    assert!(resp.text().await.expect("body").contains("nested messages"));
    // Tocsin's own WriteLogs: 300,000 empty events.
    let mut client = server.client().await;
    let events = vec![tocsin_proto::v1::LogEvent::default(); 300_000];
    let err = client
        .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events })
        .await
        .expect_err("too many events");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("holds 300000 log events"), "{err:?}");

    // Spans without service.name first (no service column), sent twice.
    let t0 = T0 as u64;
    let anonymous = Span {
        trace_id: vec![7; 16],
        span_id: vec![8; 8],
        name: "anonymous".into(),
        start_time_unix_nano: t0,
        end_time_unix_nano: t0 + 1_000,
        ..Default::default()
    };
    for _ in 0..2 {
        let resp = otlp.export(export(vec![anonymous.clone()])).await.expect("export").into_inner();
        assert_eq!(resp.partial_success, None);
    }
    client
        .write_logs(WriteLogsRequest {
            database: String::new(),
            stream: String::new(),
            events: vec![log(T0, "gateway", "info", "logs only", "flow-1")],
        })
        .await
        .expect("write_logs");
    let get = |path: String| {
        let url = format!("http://{}{path}", server.http);
        async move {
            let resp = reqwest::get(url).await.expect("get");
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.expect("json"))
        }
    };
    let (status, v) = get("/api/v1/trace/flow-1".into()).await;
    assert_eq!((status, v["logs"].as_u64()), (200, Some(1)), "{v}");
    let (status, v) = get(format!("/api/v1/trace/{}", "07".repeat(16))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["spans"], 1, "a retried export shows its span once: {v}");
    assert_eq!(v["events"][0]["service"], "");
    let (status, v) = get("/api/v1/trace/flow-1?spans=logs".into()).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or("").contains("name the same table"), "{v}");
    let (status, v) = get("/api/v1/trace/flow-1?database=x%27y".into()).await;
    assert_eq!(status, 400, "{v}");
}
