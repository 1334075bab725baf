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

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn numbered(base: i64, from: i64, n: i64, service: &str) -> WriteLogsRequest {
    let events = (from..from + n).map(|i| ev(base - T0 + i, service, "info", format!("seq {i}"))).collect();
    WriteLogsRequest { database: String::new(), stream: String::new(), events }
}

#[tokio::test]
async fn since_backfills_then_goes_live_with_no_gap_and_no_duplicate_at_the_seam() {
    let server = TestServer::start();
    let mut client = server.client().await;
    let base = now_ns();
    // Older than the window, and another service: neither may appear.
    client.write_logs(numbered(base - 3_600 * SEC, -5, 5, "svc")).await.expect("old");
    client.write_logs(numbered(base, 0, 50, "other")).await.expect("other");
    // Stored before anyone subscribes.
    for b in 0..3 {
        client.write_logs(numbered(base, b * 100, 100, "svc")).await.expect("pre");
    }
    // A writer keeps writing, one acknowledged request after another, while
    // the subscription starts: the seam falls somewhere in its stream.
    const TOTAL: i64 = 2300;
    let (acked_tx, mut acked) = tokio::sync::watch::channel(300i64);
    let writer = tokio::spawn({
        let mut c = client.clone();
        async move {
            for from in (300..TOTAL).step_by(10) {
                c.write_logs(numbered(base, from, 10, "svc")).await.expect("live write");
                let _ = acked_tx.send(from + 10);
            }
        }
    });
    acked.wait_for(|&n| n >= 600).await.expect("writer progress");
    let req = TailRequest { services: vec!["svc".into()], since_ms: 600_000, buffer: 100_000, ..Default::default() };
    let mut tail = client.tail(req).await.expect("tail").into_inner();
    let mut got = Vec::new();
    while got.len() < TOTAL as usize {
        match next(&mut tail).await {
            Kind::Event(e) => {
                assert_eq!(e.service, "svc");
                got.push(e.message.strip_prefix("seq ").and_then(|s| s.parse::<i64>().ok()).expect("numbered"));
            }
            Kind::Dropped(n) => panic!("dropped {n} with a queue of 100000"),
        }
    }
    writer.await.expect("writer");
    let want: Vec<i64> = (0..TOTAL).collect();
    if got != want {
        let dup = got.windows(2).find(|w| w[0] >= w[1]);
        panic!("not 0..{TOTAL} in order: first disorder or duplicate at {dup:?}");
    }
    // Nothing more: no duplicate arrives late.
    client.write_logs(numbered(base, TOTAL, 1, "svc")).await.expect("marker");
    assert_eq!(next(&mut tail).await, Kind::Event(ev(base - T0 + TOTAL, "svc", "info", format!("seq {TOTAL}"))));
}

#[tokio::test]
async fn tail_cli_shows_stored_events_then_live_ones() {
    use std::io::{BufRead, BufReader};
    let server = TestServer::start();
    let mut client = server.client().await;
    let base = now_ns();
    let write = |msg: &str, level: &str, t: i64| WriteLogsRequest {
        database: String::new(),
        stream: String::new(),
        events: vec![ev(base - T0 + t, "cli-svc", level, msg.into())],
    };
    client.write_logs(write("stored warning", "warn", 0)).await.expect("write");
    client.write_logs(write("stored info", "info", 1)).await.expect("write");
    let mut child = std::process::Command::new(crate::server::BIN)
        .args(["tail", "--since", "10m", "--service", "cli-svc", "--level", ">=warn"])
        .args(["--http-addr", &server.http.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tocsin tail");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = |rx: &std::sync::mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(10)).expect("a line");
    let first = line(&rx);
    assert!(first.contains("cli-svc") && first.contains("warn") && first.ends_with("stored warning"), "{first}");
    // Live (the subscription exists once the first line is out); the info
    // event is filtered out.
    client.write_logs(write("live info", "info", 2)).await.expect("write");
    client.write_logs(write("live error", "ERROR", 3)).await.expect("write");
    let second = line(&rx);
    assert!(second.contains("error") && second.ends_with("live error"), "{second}");
    let _ = child.kill();
    let _ = child.wait();
    // A backfill longer than a day is refused with the reason.
    let resp = reqwest::get(format!("http://{}/api/v1/tail?since=30d", server.http)).await.expect("get");
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.expect("body").contains("query older events with SQL"));
}
