//! `kill -9` while clients write: every acknowledged row survives, and none
//! appears twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::server::TestServer;
use crate::util::*;

const WRITERS: i64 = 4;
const BATCH: i64 = 50;

async fn write_until_error(server_grpc: std::net::SocketAddr, writer: i64, acked: Arc<Mutex<Vec<i64>>>) {
    let Ok(mut client) = tocsin_proto::v1::ingest_client::IngestClient::connect(format!("http://{server_grpc}")).await
    else {
        return;
    };
    let w = writer.to_string();
    for k in 0.. {
        let ids: Vec<i64> = (0..BATCH).map(|i| writer * 1_000_000_000 + k * BATCH + i).collect();
        let req = rows(
            "crash",
            vec![row_series(&[("writer", &w)], ids.iter().map(|id| T0 + id).collect(), vec![i64s("id", ids.clone())])],
        );
        match client.write_rows(req).await {
            Ok(resp) => {
                assert_eq!(resp.into_inner().accepted_rows, BATCH as u64);
                acked.lock().expect("lock").extend(ids);
            }
            Err(_) => return,
        }
    }
}

/// Writes, kills, restarts and checks; returns the killed server's log.
async fn check_round(kill_after: Duration, extra: &[&str], tmp: &std::path::Path) -> String {
    let dir = tmp.join("data");
    let mut server = TestServer::start_in(&dir, extra);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(write_until_error(server.grpc, w, Arc::clone(&acked)))).collect();
    tokio::time::sleep(kill_after).await;
    server.kill9();
    for w in writers {
        w.await.expect("writer task");
    }
    let acked: Vec<i64> = acked.lock().expect("lock").clone();
    assert!(!acked.is_empty(), "no write was acknowledged in {kill_after:?}");
    let killed_log = server.log_text();

    let server = TestServer::start_in(&dir, extra);
    let rows = server.sql("SELECT id FROM crash").await;
    let present: Vec<i64> = rows.iter().filter_map(|r| r["id"].as_i64()).collect();
    let unique: HashSet<i64> = present.iter().copied().collect();
    assert_eq!(unique.len(), present.len(), "some rows appear twice after recovery");
    let missing: Vec<&i64> = acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged rows lost after kill -9 at {kill_after:?} (e.g. {:?}); log:\n{}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)],
        server.log_text()
    );
    let n = server.sql("SELECT count(*) AS n FROM crash").await;
    assert_eq!(n[0]["n"], Value::from(present.len()));
    killed_log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_loses_no_acknowledged_row() {
    for ms in [20, 150, 400, 900] {
        let tmp = tempfile::tempdir().expect("tempdir");
        check_round(Duration::from_millis(ms), &[], tmp.path()).await;
    }
}

/// The same with a tiny persist threshold, so that the kill also lands
/// during or between persists (segments written, manifest swapped, WAL
/// trimmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_persistence_loses_no_acknowledged_row() {
    for ms in [300, 700, 1500] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = tmp.path().join("tocsin.toml");
        std::fs::write(&cfg, "[storage]\npersist_max_mb = 1\npersist_max_age = \"1s\"\n").expect("config");
        check_round(Duration::from_millis(ms), &["--config", cfg.to_str().expect("utf8")], tmp.path()).await;
    }
}

/// And with compaction merging the persisted segments every 100 ms, so that
/// kills land while merges read, write and swap segments. A machine busy
/// with other tests may reach its first merge later: rounds with later
/// kills follow until merges have run (or the last one's deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_compaction_loses_no_acknowledged_row() {
    let mut compacted = 0;
    for (round, ms) in [1500, 2600, 4000, 6000, 9000].into_iter().enumerate() {
        if round >= 3 && compacted > 0 {
            break;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = tmp.path().join("tocsin.toml");
        std::fs::write(
            &cfg,
            "[storage]\npersist_max_mb = 1\npersist_max_age = \"1s\"\n\
             [compaction]\nfan_in = 2\ninterval = \"100ms\"\ngrace = \"0s\"\n",
        )
        .expect("config");
        let log = check_round(Duration::from_millis(ms), &["--config", cfg.to_str().expect("utf8")], tmp.path()).await;
        compacted += log.matches("compacted segments").count();
    }
    assert!(compacted > 0, "no compaction ran before the kills");
}

/// SIGTERM while the server replays its WAL at start (or at any moment
/// before its ports open) is a clean stop once it has started: exit status
/// 0, every row kept. Before, the signal handler was installed only after
/// the ports opened, and a SIGTERM that came earlier, or raced the listening
/// line, killed the process outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_wal_replay_is_a_clean_shutdown() {
    const BATCHES: i64 = 20;
    const ROWS: i64 = 10_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut server = TestServer::start_in(&dir, &[]);
    let mut client = server.client().await;
    for b in 0..BATCHES {
        let ids: Vec<i64> = (b * ROWS..(b + 1) * ROWS).collect();
        let req = rows(
            "replayed",
            vec![row_series(&[("host", "a")], ids.iter().map(|id| T0 + id).collect(), vec![i64s("id", ids.clone())])],
        );
        assert_eq!(client.write_rows(req).await.expect("write").into_inner().accepted_rows, ROWS as u64);
    }
    server.kill9();

    let log = tmp.path().join("replay.log");
    let mut child = std::process::Command::new(crate::server::server_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env_remove("TOCSIN_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn tocsin");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !text().contains("replaying the WAL") {
        assert!(std::time::Instant::now() < deadline, "no replay announced; log:\n{}", text());
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "no exit after SIGTERM; log:\n{}", text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "SIGTERM during replay ended in {status}; log:\n{}", text());
    assert!(text().contains("shutdown complete"), "{}", text());

    let server = TestServer::start_in(&dir, &[]);
    let n = server.sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM replayed").await;
    assert_eq!(n[0]["n"], Value::from(BATCHES * ROWS));
    assert_eq!(n[0]["d"], Value::from(BATCHES * ROWS));
}
