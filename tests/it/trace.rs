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
    assert!(text.contains("path: gateway -> orders -> billing -> notifier -> gateway"), "{text}");

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
