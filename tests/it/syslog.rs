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
