//! Faults of the machine under the real binary: a disk that fills up while
//! many writers wait for durability.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::server::TestServer;

/// A tmpfs of a few MiB mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts `mib` MiB at `dir`; `None` where this process may not mount
    /// (the test then says so and checks nothing: CI runs as root).
    fn mount(dir: &Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One request of 500 points of series `b=<batch>`, ~100 KB.
fn batch_body(batch: &str) -> String {
    let pad = "p".repeat(180);
    (0..500).map(|i| format!("m,b={batch} s=\"{pad}\",i={i}i {}\n", 1_700_000_000_000_000_000i64 + i)).collect()
}

/// Writes batches until the first refusal; returns the acknowledged ones.
/// Every request must be answered: a writer left waiting is the defect.
async fn writer(http: std::net::SocketAddr, id: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut acked = Vec::new();
    for n in 0.. {
        let batch = format!("w{id}-{n}");
        let send = client.post(format!("http://{http}/write?db=public")).body(batch_body(&batch)).send();
        let resp = tokio::time::timeout(Duration::from_secs(60), send)
            .await
            .unwrap_or_else(|_| panic!("writer {id}: request {n} was never answered after the disk filled"));
        match resp {
            Ok(r) if r.status().as_u16() == 204 => acked.push(batch),
            _ => break,
        }
    }
    acked
}

/// The disk fills under 32 writers: every writer gets an answer (the
/// records appended whole before the failure are acknowledged, later ones
/// refused), reads go on, SIGTERM ends the server promptly, and after a
/// restart every acknowledged batch is there exactly once. Before, writers
/// already waiting for the fsync were never woken and held the storage
/// gate, so persist and shutdown hung too (61 s and counting).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_answers_every_writer_keeps_reads_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(fs) = Tmpfs::mount(&tmp.path().join("small"), 24) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root); this test needs one");
        return;
    };
    let dir = fs.0.join("data");
    let mut server = TestServer::start_in(&dir, &[]);
    let writers: Vec<_> = (0..32).map(|id| tokio::spawn(writer(server.http, id))).collect();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }
    assert!(!acked.is_empty(), "nothing was written before the disk filled");
    let (status, body) = server.sql_raw("SELECT count(*) AS n FROM m").await;
    assert_eq!(status, 200, "reads go on after the disk filled: {body}");
    let (status, body) = server.sql_raw("INSERT INTO m (ts, b, i) VALUES (now(), 'late', 1)").await;
    assert!(status >= 400, "a write after the failure is refused: {status} {body}");
    assert!(body.to_string().contains("refused until restart"), "{body}");
    let started = std::time::Instant::now();
    server.terminate(); // panics after 30 s
    eprintln!("shutdown took {:?}", started.elapsed());

    // Restart on a copy with room to spare.
    let copy = tmp.path().join("copy");
    let cp = Command::new("cp").arg("-a").arg(&dir).arg(&copy).status().expect("cp");
    assert!(cp.success());
    drop(fs);
    // The audit log's chain is whole: an append cut short by the full disk
    // was cut off, not left as half a line for later entries to follow.
    let verify = Command::new(crate::server::BIN)
        .args(["audit", "verify", "--data-dir"])
        .arg(&copy)
        .output()
        .expect("audit verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let server = TestServer::start_in(&copy, &[]);
    let rows = server.sql("SELECT b, count(*) AS n FROM m GROUP BY b").await;
    let found: HashMap<String, i64> = rows
        .iter()
        .map(|r: &Value| (r["b"].as_str().unwrap_or("").to_string(), r["n"].as_i64().unwrap_or(0)))
        .collect();
    let acked: HashSet<String> = acked.into_iter().collect();
    for b in &acked {
        assert_eq!(found.get(b), Some(&500), "acknowledged batch {b} after restart");
    }
    for (b, n) in &found {
        assert_eq!(*n, 500, "batch {b} is half there (acknowledged: {})", acked.contains(b));
    }
}
