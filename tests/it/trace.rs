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

    // Attributes are a JSON object; json_get_str reads a key.
    let rows = server.sql("SELECT count(*) AS n FROM logs WHERE json_get_str(attributes, 'region') = 'eu'").await;
    assert_eq!(rows, [serde_json::json!({"n": 6})]);

    let missing = reqwest::get(format!("http://{}/api/v1/trace/nope", server.http)).await.expect("get");
    assert_eq!(missing.status().as_u16(), 404);
    let bad = reqwest::get(format!("http://{}/api/v1/trace/x'%20OR%20'1", server.http)).await.expect("get");
    assert_eq!(bad.status().as_u16(), 400);
}
