//! Syslog listeners: RFC 5424 and RFC 3164 over TCP (octet-counted and
//! newline-framed, frames split across reads) and UDP, through the real
//! binary; a broken stream closes only its own connection.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::server::TestServer;

const FLAGS: [&str; 4] = ["--syslog-tcp-addr", "127.0.0.1:0", "--syslog-udp-addr", "127.0.0.1:0"];

fn octet(msg: &str) -> String {
    format!("{} {msg}", msg.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tcp_and_udp_is_in_logs_and_survives_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut s = TestServer::start_in(&data, &FLAGS);
    let tcp = s.syslog_tcp.expect("syslog TCP address on the listening line");
    let udp = s.syslog_udp.expect("syslog UDP address on the listening line");

    let mut c = TcpStream::connect(tcp).expect("connect");
    let sd = r#"<165>1 2025-12-05T20:00:00.25Z db01 billing 812 ID47 [origin@1 ip="10.0.0.7" note="a \"quoted\] one"] charge failed"#;
    let first = format!("{}<38>Dec  5 19:59:58 gw1 sshd[4242]: Accepted publickey for ops\n", octet(sd));
    c.write_all(first.as_bytes()).expect("write");
    // One frame cut across two writes (and so, most likely, two reads).
    let split = octet("<11>1 2025-12-05T20:00:01Z db02 billing - - - second half arrives later");
    c.write_all(&split.as_bytes()[..20]).expect("write");
    c.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(&split.as_bytes()[20..]).expect("write");
    drop(c);

    let u = UdpSocket::bind("127.0.0.1:0").expect("udp");
    u.send_to(b"<131>1 - - edge - - - over udp\n", udp).expect("send");

    // A frame that claims 999,999 bytes: that connection is closed, with the
    // message before it kept; other connections go on.
    let mut bad = TcpStream::connect(tcp).expect("connect");
    bad.write_all(b"<13>before the bad frame\n999999 <13>x").expect("write");
    bad.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut rest = Vec::new();
    let n = bad.read_to_end(&mut rest).expect("the server closes the connection");
    assert_eq!(n, 0, "nothing is sent back");
    let mut after = TcpStream::connect(tcp).expect("connect after the bad one");
    after.write_all(b"<14>Dec  5 20:00:02 web01 nginx: still served\n").expect("write");
    drop(after);

    let q = "SELECT host, service, level, message, attributes FROM logs ORDER BY message";
    let rows = s.sql_until(q, |r| r.len() >= 6).await;
    let text: Vec<String> = rows.iter().map(|r| r["message"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(
        text,
        [
            "Accepted publickey for ops",
            "before the bad frame",
            "charge failed",
            "over udp",
            "second half arrives later",
            "still served"
        ],
        "{rows:?}"
    );
    let row = |m: &str| rows.iter().find(|r| r["message"] == m).expect("row").clone();
    let charge = row("charge failed");
    assert_eq!((charge["host"].as_str(), charge["service"].as_str()), (Some("db01"), Some("billing")));
    assert_eq!(charge["level"], "info", "notice is info");
    let attrs: serde_json::Value = serde_json::from_str(charge["attributes"].as_str().expect("json")).expect("json");
    assert_eq!(attrs["origin@1.ip"], "10.0.0.7");
    assert_eq!(attrs["origin@1.note"], "a \"quoted] one");
    assert_eq!((attrs["facility"].as_str(), attrs["procid"].as_str()), (Some("local4"), Some("812")));
    let ssh = row("Accepted publickey for ops");
    assert_eq!((ssh["host"].as_str(), ssh["service"].as_str()), (Some("gw1"), Some("sshd")));
    let udp_row = row("over udp");
    assert_eq!((udp_row["host"].as_str(), udp_row["level"].as_str()), (Some("127.0.0.1"), Some("error")));
    let ts = s.sql("SELECT CAST(ts AS BIGINT) AS ns FROM logs WHERE message = 'charge failed'").await;
    assert_eq!(ts[0]["ns"], 1_764_964_800_250_000_000_i64);
    assert!(s.metric("tocsin_syslog_invalid_messages_total").await >= 1.0, "the bad frame is counted");
    assert!(s.metric("tocsin_syslog_messages_total").await >= 6.0);
    assert!(s.log_text().contains("is over the limit"), "the log says why the connection closed");

    assert!(s.terminate().success());
    let s = TestServer::start_in(&data, &FLAGS);
    let again = s.sql(q).await;
    assert_eq!(again.len(), 6, "{again:?}");
}

#[test]
fn a_bad_syslog_table_refuses_the_start_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("tocsin.toml");
    std::fs::write(&config, "[syslog]\ntcp_addr = \"127.0.0.1:0\"\ntable = \"../x\"\n").expect("write");
    let out = std::process::Command::new(crate::server::BIN)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("syslog.table"), "{err}");
}

/// Syslog has no acknowledgements: when storage asks to wait (here a rate
/// limit of 100 rows/s), the listener holds what it read and stops reading
/// instead of dropping it. It used to log the refusal and drop the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_sender_is_slowed_not_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("tocsin.toml");
    std::fs::write(&config, "[limits]\ningest_rows_per_second = 200\ningest_burst_rows = 200\n").expect("write");
    let config = config.to_str().expect("utf-8").to_string();
    let mut flags = FLAGS.to_vec();
    flags.extend(["--config", &config]);
    let s = TestServer::start_in(&tmp.path().join("data"), &flags);
    let tcp = s.syslog_tcp.expect("syslog TCP");
    let mut c = TcpStream::connect(tcp).expect("connect");
    // In 20 writes, so that they are many reads: the first takes the
    // bucket into debt, the next ones have to wait.
    for chunk in 0..20 {
        let lines: String =
            (chunk * 50..chunk * 50 + 50).map(|i| format!("<14>Dec  5 20:00:00 h app: message {i}\n")).collect();
        c.write_all(lines.as_bytes()).expect("write");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    let started = std::time::Instant::now();
    let mut n = serde_json::Value::Null;
    for _ in 0..150 {
        n = s.sql("SELECT count(*) AS n FROM logs").await.first().map(|r| r["n"].clone()).unwrap_or_default();
        if n == 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 1000, "every message is written, at the rate allowed");
    assert!(started.elapsed() > Duration::from_secs(1), "the rate limit applied: {:?}", started.elapsed());
    assert!(s.log_text().contains("storage asks to wait"), "the wait is logged");
    assert_eq!(s.metric("tocsin_syslog_dropped_messages_total").await, 0.0);
    assert_eq!(s.metric("tocsin_syslog_messages_total").await, 1000.0);
}

/// What a hostile or confused client can do to the TCP listener: an HTTP
/// request (a web page can make a browser send one) is not read as syslog;
/// one address holds at most `max_connections_per_host`; a frame left
/// incomplete is closed after `frame_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_connection_hogs_and_stalled_frames_are_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("tocsin.toml");
    std::fs::write(&config, "[syslog]\nmax_connections_per_host = 2\nframe_timeout = \"1s\"\n").expect("write");
    let config = config.to_str().expect("utf-8").to_string();
    let mut flags = FLAGS.to_vec();
    flags.extend(["--config", &config]);
    let s = TestServer::start_in(&tmp.path().join("data"), &flags);
    let tcp = s.syslog_tcp.expect("syslog TCP");
    // Closed: the end of the stream, or a reset (a server that closes with
    // bytes it has not read sends RST, and the read fails with it; CI saw
    // that race); not closed: the read waits past the timeout.
    let closed = |mut c: TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut b = [0u8; 16];
        for _ in 0..64 {
            match c.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
                }
            }
        }
        false
    };

    let mut http = TcpStream::connect(tcp).expect("connect");
    http.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\r\n<10>1 - prod-db sshd - - - forged\n",
    )
    .expect("write");
    assert!(closed(http), "an HTTP request closes the connection");
    // The client sees the close a moment before the listener gives the
    // connection's place back (CI, under load, saw the next connection
    // refused): wait until none is open.
    let none_open = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.metric("tocsin_syslog_open_connections").await > 0.0 {
            assert!(std::time::Instant::now() < deadline, "connections stayed open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    none_open().await;

    let a = TcpStream::connect(tcp).expect("first");
    let b = TcpStream::connect(tcp).expect("second");
    std::thread::sleep(Duration::from_millis(200));
    let third = TcpStream::connect(tcp).expect("third connects, then is closed");
    assert!(closed(third), "a third connection from one address is closed");
    assert_eq!(s.metric("tocsin_syslog_refused_connections_total").await, 1.0);
    drop((a, b));

    none_open().await;

    let mut stalled = TcpStream::connect(tcp).expect("connect");
    stalled.write_all(b"<13>never finished").expect("write");
    let started = std::time::Instant::now();
    assert!(closed(stalled), "a stalled frame closes the connection");
    // Closed by the frame timeout (1 s), not refused at once.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(8), "{took:?}");
    assert_eq!(s.metric("tocsin_syslog_refused_connections_total").await, 1.0);

    let mut ok = TcpStream::connect(tcp).expect("connect");
    ok.write_all(b"<13>1 - h a - - - still served\n").expect("write");
    drop(ok);
    let rows = s.sql_until("SELECT message FROM logs", |r| !r.is_empty()).await;
    assert_eq!(rows, vec![serde_json::json!({"message": "still served"})], "nothing of the HTTP request was written");
    // Counted as the listener gets to it, which may be just after the
    // client sees its connection closed (CI saw 1 under load).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.metric("tocsin_syslog_invalid_messages_total").await < 2.0 {
        assert!(std::time::Instant::now() < deadline, "the HTTP request and the stalled frame were not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
