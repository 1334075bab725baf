//! Live tail through the real binary: concurrent subscribers with their own
//! filters, and a stalled one that gets a drop marker while the others and
//! ingest carry on.

use std::time::Duration;

use tocsin_proto::v1::{LogEvent, TailRequest, WriteLogsRequest, tail_message::Kind};

use crate::server::TestServer;
use crate::util::*;

fn ev(i: i64, service: &str, level: &str, msg: String) -> LogEvent {
    LogEvent {
        timestamp: T0 + i,
        service: service.into(),
        host: "n1".into(),
        level: level.into(),
        message: msg,
        ..Default::default()
    }
}

async fn next(s: &mut tonic::Streaming<tocsin_proto::v1::TailMessage>) -> Kind {
    let m = tokio::time::timeout(Duration::from_secs(10), s.message()).await.expect("tail item in time");
    m.expect("stream ok").expect("stream open").kind.expect("kind")
}

#[tokio::test]
async fn subscribers_get_exactly_their_events_and_a_slow_one_gets_a_drop_marker() {
    let server = TestServer::start();
    let mut client = server.client().await;
    let sub = |req: TailRequest| {
        let mut c = client.clone();
        async move { c.tail(req).await.expect("tail").into_inner() }
    };
    let mut billing = sub(TailRequest { services: vec!["billing".into()], ..Default::default() }).await;
    let mut warnings = sub(TailRequest { min_level: "warn".into(), ..Default::default() }).await;
    let mut stalled = sub(TailRequest { buffer: 3, ..Default::default() }).await;
    // Subscriptions are registered when the call is answered.
    let events = vec![
        ev(1, "billing", "info", "b1".into()),
        ev(2, "web", "ERROR", "w1".into()),
        ev(3, "billing", "WARN", "b2".into()),
        ev(4, "web", "info", "w2".into()),
    ];
    let resp = client
        .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events })
        .await
        .expect("write")
        .into_inner();
    assert_eq!(resp.accepted_rows, 4);
    let msg = |k: Kind| match k {
        Kind::Event(e) => e.message,
        Kind::Dropped(n) => format!("dropped {n}"),
    };
    assert_eq!([msg(next(&mut billing).await), msg(next(&mut billing).await)], ["b1", "b2"]);
    assert_eq!([msg(next(&mut warnings).await), msg(next(&mut warnings).await)], ["w1", "b2"]);

    // A burst far larger than the stalled subscriber's queue and the
    // transport's buffers; ingest does not wait for it.
    let big = "x".repeat(1000);
    for batch in 0..10 {
        let events: Vec<LogEvent> = (0..500)
            .map(|i| ev(10 + batch * 500 + i, "billing", "info", format!("{:05} {big}", batch * 500 + i)))
            .collect();
        let resp = client
            .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events })
            .await
            .expect("write burst")
            .into_inner();
        assert_eq!(resp.accepted_rows, 500);
    }
    // The billing subscriber keeps receiving everything, in order.
    for i in 0..5000 {
        let m = msg(next(&mut billing).await);
        assert_eq!(&m[..5], format!("{i:05}"), "billing event {i}");
    }
    // The stalled one: its first events, then markers where events were
    // dropped, in order, accounting for every event.
    // The stalled one: what fitted in its queue of 3, and markers where
    // events were dropped, in order, accounting for all 5,004 events.
    let (mut seen, mut dropped, mut last) = (0u64, 0u64, -1i64);
    while seen + dropped < 5004 {
        match next(&mut stalled).await {
            Kind::Event(e) => {
                if let Ok(n) = e.message.get(..5).unwrap_or("").parse::<i64>() {
                    assert!(n > last, "events stay in order");
                    last = n;
                }
                seen += 1;
            }
            Kind::Dropped(n) => dropped += n,
        }
    }
    assert!(dropped > 0, "the stalled subscriber should have dropped events");
    assert_eq!(seen + dropped, 5004);
    let metrics =
        reqwest::get(format!("http://{}/metrics", server.http)).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("tocsin_tail_subscribers 3"), "{metrics}");
}

#[tokio::test]
async fn the_http_tail_streams_server_sent_events_with_filters() {
    let server = TestServer::start();
    let mut client = server.client().await;
    let mut resp = reqwest::Client::new()
        .get(format!("http://{}/api/v1/tail", server.http))
        .query(&[("service", "web"), ("level", "warn"), ("match", "TIMEOUT")])
        .send()
        .await
        .expect("tail");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap_or("").starts_with("text/event-stream"));
    let events = vec![
        ev(1, "web", "info", "timeout ignored".into()),
        ev(2, "db", "error", "timeout in db".into()),
        ev(3, "web", "error", "upstream Timeout".into()),
    ];
    client
        .write_logs(WriteLogsRequest { database: String::new(), stream: String::new(), events })
        .await
        .expect("write");
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await.expect("in time").expect("read");
        text.push_str(&String::from_utf8_lossy(&chunk.expect("open")));
    }
    let data = text.lines().find_map(|l| l.strip_prefix("data:")).expect("a data line");
    let v: serde_json::Value = serde_json::from_str(data.trim()).expect("json");
    assert_eq!(v["message"], "upstream Timeout");
    assert_eq!(v["level"], "error");
    let bad = reqwest::get(format!("http://{}/api/v1/tail?colour=red", server.http)).await.expect("get");
    assert_eq!(bad.status().as_u16(), 400);
}
