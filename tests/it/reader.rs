//! `tocsin serve --role reader`: servers that answer queries from the copy a
//! writer keeps in object storage (here `file://`, a shared directory; the
//! interop suite runs the same against an S3 server), refuse writes, and
//! follow the writer through persists and compactions.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::auth::{call, create_token};
use crate::server::{BIN, TestServer};
use crate::util::*;

const ANSWER: &str = "SELECT host, count(*) AS n, sum(v) AS total FROM cpu GROUP BY host ORDER BY host";

/// A config file that refreshes the copy every second.
fn config(dir: &Path) -> String {
    let path = dir.join("tocsin.toml");
    std::fs::write(&path, "[storage]\nobject_store_interval = \"1s\"\n").expect("config");
    path.to_str().expect("utf-8").to_string()
}

async fn write_cpu(server: &TestServer, from: i64, count: i64) {
    let series = (0..3)
        .map(|h| {
            let ts = (from..from + count).map(|i| T0 + i * 10 * SEC).collect();
            let v = (from..from + count).map(|i| (i * (h + 1)) as f64 * 0.25).collect();
            row_series(&[("host", &format!("h{h}"))], ts, vec![f64s("v", v)])
        })
        .collect();
    let resp = server.client().await.write_rows(rows("cpu", series)).await.expect("write").into_inner();
    assert_eq!(resp.accepted_rows, 3 * count as u64);
}

/// Waits (up to 20 s) until `reader` gives `writer`'s answer to `sql`.
async fn converges(reader: &TestServer, writer: &TestServer, sql: &str) -> Vec<Value> {
    let want = writer.sql(sql).await;
    let mut got = Vec::new();
    for _ in 0..200 {
        let (status, body) = reader.sql_raw(sql).await;
        got = if status == 200 { body.as_array().cloned().unwrap_or_default() } else { Vec::new() };
        if got == want {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the reader still answers {got:?}, the writer {want:?}; reader log:\n{}", reader.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_follow_the_writer_through_persists_and_compactions_and_refuse_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let writer = TestServer::start_in(&dir.path().join("w"), &["--config", &cfg, "--object-store", &bucket]);
    write_cpu(&writer, 0, 50).await;
    let reader_args = ["--config", cfg.as_str(), "--object-store", bucket.as_str(), "--role", "reader"];
    let r1 = TestServer::start_in(&dir.path().join("r1"), &reader_args);
    let r2 = TestServer::start_in(&dir.path().join("r2"), &reader_args);
    for r in [&r1, &r2] {
        let rows = converges(r, &writer, ANSWER).await;
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0]["n"], 50);
    }

    // Rows in segments, rows still in the WAL, segments merged: the readers
    // give the writer's answer each time.
    writer.persist().await;
    write_cpu(&writer, 50, 40).await;
    converges(&r1, &writer, ANSWER).await;
    writer.persist().await;
    write_cpu(&writer, 90, 10).await;
    writer.persist().await;
    let merged = writer.compact_full().await;
    assert!(merged["merges"].as_u64().unwrap_or(0) >= 1, "a merge ran: {merged}");
    write_cpu(&writer, 100, 5).await;
    for r in [&r1, &r2] {
        let rows = converges(r, &writer, ANSWER).await;
        assert_eq!(rows[0]["n"], 105, "{rows:?}");
        converges(r, &writer, "SELECT max(ts) AS t, min(v) AS lo, max(v) AS hi FROM cpu").await;
    }
    assert!(r1.metric("tocsin_reader_point_seconds").await > 1.7e9, "the point it answers from is exported");
    assert_eq!(r1.metric("tocsin_reader_refresh_failures_total").await, 0.0, "{}", r1.log_text());

    // Writes of every kind are refused, saying where to send them.
    let one = rows("cpu", vec![row_series(&[("host", "h9")], vec![T0], vec![f64s("v", vec![1.0])])]);
    let refused = r1.client().await.write_rows(one).await.expect_err("a reader takes no writes");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("reader"), "{}", refused.message());
    let line = reqwest::Client::new()
        .post(format!("http://{}/write?db=public", r1.http))
        .body("cpu,host=h9 v=1 1700000000000000000")
        .send()
        .await
        .expect("line protocol");
    assert_eq!(line.status().as_u16(), 403);
    assert!(line.text().await.unwrap_or_default().contains("reader"));
    let (status, body) = r1.sql_raw("INSERT INTO cpu (ts, host, v) VALUES (1700000000000000000, 'h9', 1)").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("reader"), "{body}");
    for (method, path) in
        [("POST", "/api/v1/admin/persist"), ("POST", "/api/v1/admin/compact"), ("POST", "/api/v1/silences")]
    {
        let (status, body) = call(&r1, method, path, None, Some(json!({}))).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body.contains("reader"), "{body}");
    }
    let (status, body) = r1.sql_raw("INSERT INTO phantom (ts, secret) VALUES (1700000000000000000, 'x')").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) =
        r1.sql_raw("INSERT INTO cpu (ts, host, v, extra) VALUES (1700000000000000000, 'h9', 1, 2)").await;
    assert_eq!(status, 403, "{body}");
    let tail = r1.client().await.tail(tocsin_proto::v1::TailRequest::default()).await;
    let tail = tail.expect_err("a live tail follows the writer's writes");
    assert_eq!(tail.code(), tonic::Code::PermissionDenied, "{tail:?}");
    assert_eq!(r1.sql(ANSWER).await[0]["n"], 105, "the refusals changed nothing");
    let tables = r1.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").await;
    assert_eq!(tables, vec![json!({"table_name": "cpu"})], "a refused INSERT leaves no table behind");
    let columns = r1.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'cpu'").await;
    assert_eq!(columns.len(), 3, "nor a column: {columns:?}");

    // A reader restarted on its cache answers the same, and the writer's
    // answer is unchanged by its readers.
    drop(r2);
    let r2 = TestServer::start_in(&dir.path().join("r2"), &reader_args);
    converges(&r2, &writer, ANSWER).await;
    assert_eq!(writer.sql(ANSWER).await[0]["n"], 105);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_starts_only_on_its_own_cache_and_with_a_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let serve = |data: &Path, extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--config", &cfg])
            .args(extra)
            .env_remove("TOCSIN_CONFIG")
            .output()
            .expect("run tocsin");
        assert!(!out.status.success(), "the server started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve(&dir.path().join("r"), &["--role", "reader"]);
    assert!(err.contains("role") && err.contains("--object-store"), "{err}");
    let err = serve(&dir.path().join("r"), &["--role", "standby", "--object-store", &bucket]);
    assert!(err.contains("\"standby\" is not a role"), "{err}");

    // A writer's data directory is not a reader's cache: it is refused,
    // and left as it was.
    let mut writer = TestServer::start_in(&dir.path().join("w"), &["--object-store", &bucket]);
    write_cpu(&writer, 0, 5).await;
    writer.terminate();
    let manifest = std::fs::read(dir.path().join("w/manifest.json")).expect("manifest");
    let err = serve(&dir.path().join("w"), &["--role", "reader", "--object-store", &bucket]);
    assert!(err.contains("not a reader's cache"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("w/manifest.json")).expect("manifest"), manifest);

    // Nor is the cache of a reader of another bucket.
    let other = format!("file://{}", dir.path().join("other").display());
    drop(TestServer::start_in(&dir.path().join("r"), &["--role", "reader", "--object-store", &other]));
    let err = serve(&dir.path().join("r"), &["--role", "reader", "--object-store", &bucket]);
    assert!(err.contains("reader of") && err.contains("other"), "{err}");

    // And a reader's cache is not a writer's data directory.
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("r"))
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env_remove("TOCSIN_CONFIG")
        .output()
        .expect("run tocsin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cache of a reader") && err.contains("--role reader"), "{err}");

    // Two readers on one directory: the second is refused before it writes
    // anything there.
    let busy = TestServer::start_in(&dir.path().join("r"), &["--role", "reader", "--object-store", &other]);
    let err = serve(&dir.path().join("r"), &["--role", "reader", "--object-store", &other]);
    assert!(err.contains("in use by another tocsin process"), "{err}");
    drop(busy);

    // A reader started before the writer's first copy answers from nothing
    // (each refresh counts as failed meanwhile), then from the copy.
    let late = format!("file://{}", dir.path().join("late").display());
    let early = TestServer::start_in(
        &dir.path().join("early"),
        &["--config", &cfg, "--role", "reader", "--object-store", &late],
    );
    early.metric_until("tocsin_reader_refresh_failures_total", 1.0).await;
    let writer = TestServer::start_in(&dir.path().join("w2"), &["--config", &cfg, "--object-store", &late]);
    write_cpu(&writer, 0, 7).await;
    converges(&early, &writer, ANSWER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_take_the_writers_tokens_and_their_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let writer = TestServer::start_in(&dir.path().join("w"), &["--auth", "--config", &cfg, "--object-store", &bucket])
        .with_admin_token();
    let admin = writer.token.clone().expect("admin token");
    let viewer = create_token(&writer, &admin, "viewer", &[]);
    let lines: Vec<String> = (0..15).map(|i| format!("cpu,host=h{} v={i} {}", i % 3, T0 + i * SEC)).collect();
    let resp = reqwest::Client::new()
        .post(format!("http://{}/write?db=public", writer.http))
        .bearer_auth(&admin)
        .body(lines.join("\n"))
        .send()
        .await
        .expect("write");
    assert_eq!(resp.status().as_u16(), 204);
    writer.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    // Without --auth, a reader would serve the writer's data to anyone.
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("open"))
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--config", &cfg])
        .args(["--role", "reader", "--object-store", &bucket])
        .env_remove("TOCSIN_CONFIG")
        .output()
        .expect("run tocsin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("start the reader with --auth"), "{err}");
    let reader = TestServer::start_in(
        &dir.path().join("r"),
        &["--auth", "--config", &cfg, "--role", "reader", "--object-store", &bucket],
    );
    assert!(!reader.data_dir.join("admin-token").exists(), "the reader made no token of its own");
    let sql = json!({ "sql": "SELECT count(*) AS n FROM cpu" });
    let mut last = (0, String::new());
    for _ in 0..200 {
        last = call(&reader, "POST", "/api/v1/sql", Some(&viewer), Some(sql.clone())).await;
        if last.1.contains("15") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 200, "the writer's token works on the reader: {}", last.1);
    assert!(last.1.contains("15"), "{}", last.1);
    let (status, _) = call(&reader, "POST", "/api/v1/sql", None, Some(sql.clone())).await;
    assert_eq!(status, 401);
    // Tokens are managed on the writer; the reader follows.
    let (status, body) = call(&reader, "POST", "/api/v1/tokens", Some(&admin), Some(json!({"role": "viewer"}))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("reader"), "{body}");
    let id = viewer.split('_').nth(1).expect("id");
    let (status, body) = call(&writer, "DELETE", &format!("/api/v1/tokens/{id}"), Some(&admin), None).await;
    assert!(status < 300, "revoke on the writer: {status} {body}");
    for _ in 0..200 {
        last = call(&reader, "POST", "/api/v1/sql", Some(&viewer), Some(sql.clone())).await;
        if last.0 == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 401, "a token revoked on the writer stops working on the reader: {}", last.1);
    assert!(last.1.contains("revoked"), "{}", last.1);
}

/// One copy, one writer: a second server does not take over a copy whose
/// server is alive; it does once that server is quiet (paused), and the
/// paused server, resumed, stops taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_has_one_writer_and_a_writer_taken_over_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let args = ["--config", cfg.as_str(), "--object-store", bucket.as_str()];
    let a = TestServer::start_in(&dir.path().join("a"), &args);
    write_cpu(&a, 0, 10).await;
    a.metric_until("tocsin_object_store_pushes_total", 2.0).await;

    // A is alive: B, on an empty directory, waits for it to go quiet, sees
    // it push, and refuses to start.
    let err = TestServer::refused_start_with(&dir.path().join("b-early"), &args);
    assert!(err.contains("is pushing into"), "{err}");

    // A paused (right after a push) past its window: B takes the copy
    // over, with A's rows.
    let pushes = a.metric("tocsin_object_store_pushes_total").await;
    a.metric_until("tocsin_object_store_pushes_total", pushes + 1.0).await;
    a.signal(libc::SIGSTOP);
    let b = TestServer::start_in(&dir.path().join("b"), &args);
    assert!(b.log_text().contains("waiting"), "B waited for A's window: {}", b.log_text());
    assert_eq!(b.sql(ANSWER).await[0]["n"], 10);
    write_cpu(&b, 10, 5).await;
    b.metric_until("tocsin_object_store_pushes_total", 1.0).await;

    // A resumes: its next push finds B's, and it stops taking writes.
    a.signal(libc::SIGCONT);
    assert_eq!(a.metric_until("tocsin_object_store_fenced", 1.0).await, 1.0);
    let refused = a
        .client()
        .await
        .write_rows(rows("cpu", vec![row_series(&[("host", "h0")], vec![T0], vec![f64s("v", vec![1.0])])]))
        .await;
    let refused = refused.expect_err("a writer taken over refuses writes");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("taken the copy over"), "{}", refused.message());

    // A reader of the copy follows B, the writer now.
    let r =
        TestServer::start_in(&dir.path().join("r"), &["--config", &cfg, "--object-store", &bucket, "--role", "reader"]);
    let rows_seen = converges(&r, &b, ANSWER).await;
    assert_eq!(rows_seen[0]["n"], 15);

    // B stops cleanly: the next server takes over at once, without waiting.
    let mut b = b;
    b.terminate();
    let c = TestServer::start_in(&dir.path().join("c"), &args);
    assert!(!c.log_text().contains("waiting"), "{}", c.log_text());
    assert_eq!(c.sql(ANSWER).await[0]["n"], 15);
    write_cpu(&c, 15, 5).await;
    c.metric_until("tocsin_object_store_pushes_total", 1.0).await;

    // A and B restarted on their own data directories are behind the copy:
    // pushing them would roll it back, so they do not start.
    let mut a = a;
    a.terminate();
    for former in ["a", "b"] {
        let err = TestServer::refused_start_with(&dir.path().join(former), &args);
        assert!(err.contains("roll the copy back") && err.contains("empty data directory"), "{former}: {err}");
    }
    // `tocsin restore` of the copy makes another server (a new identity):
    // started with the copy's --object-store, it is refused at once
    // instead of failing every push.
    let restored = dir.path().join("restored");
    let out = Command::new(BIN)
        .args(["restore", dir.path().join("bucket").to_str().expect("utf-8"), "--data-dir"])
        .arg(&restored)
        .output()
        .expect("run tocsin restore");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = TestServer::refused_start_with(&restored, &args);
    assert!(err.contains("holds the copy of another data directory"), "{err}");

    // C restarted on its own directory continues its copy.
    let mut c = c;
    c.terminate();
    let c = TestServer::start_in(&dir.path().join("c"), &args);
    write_cpu(&c, 20, 5).await;
    c.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    assert_eq!(c.metric("tocsin_object_store_fenced").await, 0.0, "{}", c.log_text());
    assert_eq!(converges(&r, &c, ANSWER).await[0]["n"], 25);
}

/// The pieces of shipped WAL in a `file://` copy, by run.
fn shipped_pieces(bucket: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for run in std::fs::read_dir(bucket.join("runs")).into_iter().flatten().flatten() {
        for piece in std::fs::read_dir(run.path().join("shipped")).into_iter().flatten().flatten() {
            out.push(format!("{}/{}", run.file_name().to_string_lossy(), piece.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

/// Restores the copy in `bucket` into `dir` with `tocsin restore`; its output.
fn restore_copy(bucket: &Path, dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["restore", bucket.to_str().expect("utf-8"), "--data-dir"])
        .arg(dir)
        .output()
        .expect("run tocsin restore");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A writer that ships its WAL and alerting journal, taken over by another
/// server, stops shipping and idles. Before, its alerting journal shipper
/// woke at once forever (a core at 100 % until the server was stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipping_writer_taken_over_idles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("tocsin.toml");
    std::fs::write(&cfg, "[storage]\nobject_store_interval = \"1s\"\nwal = \"object-store-sync\"\n").expect("config");
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let args = ["--config", cfg.to_str().expect("utf-8"), "--object-store", bucket.as_str()];
    let a = TestServer::start_in(&dir.path().join("a"), &args);
    write_cpu(&a, 0, 10).await;
    let pushes = a.metric_until("tocsin_object_store_pushes_total", 2.0).await;
    a.metric_until("tocsin_object_store_pushes_total", pushes + 1.0).await;
    a.signal(libc::SIGSTOP);
    let b = TestServer::start_in(&dir.path().join("b"), &args);
    assert_eq!(b.sql(ANSWER).await[0]["n"], 10);
    b.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    a.signal(libc::SIGCONT);
    assert_eq!(a.metric_until("tocsin_object_store_fenced", 1.0).await, 1.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = a.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = a.cpu_time() - before;
    assert!(used < Duration::from_millis(500), "a fenced server used {used:?} of CPU in 2 s");
}

/// `wal = "object-store-sync"`: a write is answered once its WAL records are
/// in the bucket. The copy is pushed only at start (the interval is an
/// hour), so the rows written after it, persisted or not, reach a restore
/// of the copy only through the shipped WAL: after kill -9 every row
/// acknowledged is there, once. A restart on the same directory pushes at
/// once and removes the pieces its image now holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_wal_shipped_synchronously_a_restore_of_the_copy_holds_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("tocsin.toml");
    std::fs::write(&cfg, "[storage]\nobject_store_interval = \"1h\"\nwal = \"object-store-sync\"\n").expect("config");
    let bucket_dir = dir.path().join("bucket");
    let bucket = format!("file://{}", bucket_dir.display());
    let args = ["--config", cfg.to_str().expect("utf-8"), "--object-store", bucket.as_str()];
    let mut a = TestServer::start_in(&dir.path().join("a"), &args);
    a.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    write_cpu(&a, 0, 50).await;
    a.persist().await;
    write_cpu(&a, 50, 30).await;
    // Concurrent writers share pieces; each is answered after its own.
    let mut writers = Vec::new();
    for k in 0..4 {
        let client = a.client().await;
        writers.push(tokio::spawn(async move {
            let mut client = client;
            for i in 0..5 {
                let from = 80 + (k * 5 + i) * 2;
                let ts: Vec<i64> = (from..from + 2).map(|t| T0 + t * 10 * SEC).collect();
                let series = (0..3)
                    .map(|h| row_series(&[("host", &format!("h{h}"))], ts.clone(), vec![f64s("v", vec![1.0, 2.0])]))
                    .collect();
                let resp = client.write_rows(rows("cpu", series)).await.expect("write").into_inner();
                assert_eq!(resp.accepted_rows, 6);
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    assert!(a.metric("tocsin_object_store_wal_pieces_total").await >= 3.0, "{}", a.log_text());
    assert_eq!(a.metric("tocsin_object_store_pushes_total").await, 1.0, "only the push at start");
    let want = a.sql(ANSWER).await;
    assert_eq!(want[0]["n"], 120, "{want:?}");
    a.kill9();
    let pieces = shipped_pieces(&bucket_dir);
    assert!(!pieces.is_empty(), "the writes since the push are in the bucket as shipped WAL");

    let restored = dir.path().join("restored");
    let said = restore_copy(&bucket_dir, &restored);
    assert!(said.contains("the WAL its server shipped after that point"), "{said}");
    let r = TestServer::start_in(&restored, &[]);
    assert_eq!(r.sql(ANSWER).await, want, "every acknowledged row, once");
    drop(r);

    // Restarted on its own directory, the server pushes at once: the copy
    // then holds its writes as an image, and the pieces of its earlier run
    // are removed.
    let a = TestServer::start_in(&dir.path().join("a"), &args);
    a.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    assert!(shipped_pieces(&bucket_dir).iter().all(|p| !pieces.contains(p)), "{:?}", shipped_pieces(&bucket_dir));
    write_cpu(&a, 200, 10).await;
    let want = a.sql(ANSWER).await;
    assert_eq!(want[0]["n"], 130, "{want:?}");
    let again = dir.path().join("again");
    restore_copy(&bucket_dir, &again);
    let r = TestServer::start_in(&again, &[]);
    assert_eq!(r.sql(ANSWER).await, want);
}

/// `wal` other than `local` needs a bucket, and a known value.
#[test]
fn shipping_the_wal_needs_a_bucket_and_a_known_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("tocsin.toml");
    std::fs::write(&cfg, "[storage]\nwal = \"object-store-sync\"\n").expect("config");
    let err = TestServer::refused_start_with(&dir.path().join("d"), &["--config", cfg.to_str().expect("utf-8")]);
    assert!(err.contains("storage.wal") && err.contains("--object-store"), "{err}");
    std::fs::write(&cfg, "[storage]\nwal = \"s3\"\n").expect("config");
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let err = TestServer::refused_start_with(
        &dir.path().join("d2"),
        &["--config", cfg.to_str().expect("utf-8"), "--object-store", &bucket],
    );
    assert!(err.contains("object-store-sync"), "{err}");
}

/// A writer in `dir/w` with its copy in `bucket`, pushed only at start (the
/// interval is an hour), shipping its WAL every second (`wal =
/// "object-store"`), once it has pushed.
async fn shipping_writer(dir: &Path, bucket: &str) -> TestServer {
    let cfg = dir.join("writer.toml");
    std::fs::write(
        &cfg,
        "[storage]\nobject_store_interval = \"1h\"\nwal = \"object-store\"\nwal_ship_interval = \"1s\"\n",
    )
    .expect("config");
    let writer =
        TestServer::start_in(&dir.join("w"), &["--config", cfg.to_str().expect("utf-8"), "--object-store", bucket]);
    writer.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    writer
}

/// A reader of a writer that ships its WAL and pushes its image only at
/// start answers the writes since that image within seconds, persisted on
/// the writer or not: each refresh applies the pieces shipped since it
/// last looked. Before, it waited for the next push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_follows_the_shipped_wal_between_pushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let writer = shipping_writer(dir.path(), &bucket).await;
    write_cpu(&writer, 0, 20).await;
    let cfg = config(dir.path());
    let reader = TestServer::start_in(
        &dir.path().join("r"),
        &["--config", cfg.as_str(), "--object-store", bucket.as_str(), "--role", "reader"],
    );
    assert_eq!(converges(&reader, &writer, ANSWER).await[0]["n"], 20);
    write_cpu(&writer, 20, 10).await;
    writer.persist().await;
    write_cpu(&writer, 30, 5).await;
    assert_eq!(converges(&reader, &writer, ANSWER).await[0]["n"], 35);
    assert_eq!(
        writer.metric("tocsin_object_store_pushes_total").await,
        1.0,
        "only the push at start: the reader read the shipped WAL"
    );
    assert!(reader.metric("tocsin_reader_refresh_failures_total").await == 0.0, "{}", reader.log_text());
    assert!(reader.metric("tocsin_reader_shipped_rows_total").await >= 45.0, "{}", reader.log_text());

    // The writer stops (its last push holds every row) and starts again (a
    // new run, shipping anew): the reader takes the new image in place of
    // what it applied, and follows the new run's pieces, every row once.
    let mut writer = writer;
    assert!(writer.terminate().success());
    let writer = shipping_writer(dir.path(), &bucket).await;
    write_cpu(&writer, 35, 5).await;
    assert_eq!(converges(&reader, &writer, ANSWER).await[0]["n"], 40);
    assert_eq!(reader.metric("tocsin_reader_refresh_failures_total").await, 0.0, "{}", reader.log_text());
}

/// A piece whose upload timed out after it landed is sent again under its
/// name, longer (with the records written since). A reader that read the
/// shorter one reads it again when the bucket lists it larger: here the
/// writer's last piece is replaced by hand with itself and the piece after
/// it, as such a retry leaves it, after the reader has followed the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_sent_again_longer_is_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket_dir = dir.path().join("bucket");
    let bucket = format!("file://{}", bucket_dir.display());
    let mut writer = shipping_writer(dir.path(), &bucket).await;
    let pieces_after = |n: usize| {
        let bucket_dir = bucket_dir.clone();
        async move {
            for _ in 0..100 {
                if shipped_pieces(&bucket_dir).len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("fewer than {n} pieces shipped: {:?}", shipped_pieces(&bucket_dir));
        }
    };
    write_cpu(&writer, 0, 20).await;
    pieces_after(1).await;
    write_cpu(&writer, 20, 10).await;
    pieces_after(2).await;
    let want = writer.sql(ANSWER).await;
    writer.kill9();
    let pieces = shipped_pieces(&bucket_dir);
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    let path = |p: &str| bucket_dir.join("runs").join(p.replace('/', "/shipped/"));
    let (first, second) = (path(&pieces[0]), path(&pieces[1]));
    let second_bytes = std::fs::read(&second).expect("second piece");
    // `<file>-<offset>`: one file, the second piece right after the first.
    let at = |p: &str| -> (u64, u64) {
        let name = p.rsplit('/').next().expect("name");
        let (file, offset) = name.split_once('-').expect("file-offset");
        (file.parse().expect("file"), offset.parse().expect("offset"))
    };
    let first_len = std::fs::metadata(&first).expect("first piece").len();
    assert_eq!(at(&pieces[1]), (at(&pieces[0]).0, at(&pieces[0]).1 + first_len), "{pieces:?}");
    let moved = dir.path().join("second");
    std::fs::rename(&second, &moved).expect("hold the second piece back");

    let cfg = config(dir.path());
    let reader = TestServer::start_in(
        &dir.path().join("r"),
        &["--config", cfg.as_str(), "--object-store", bucket.as_str(), "--role", "reader"],
    );
    let mut got = Vec::new();
    for _ in 0..100 {
        got = reader.sql(ANSWER).await;
        if got.first().is_some_and(|r| r["n"] == 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got[0]["n"], 20, "the reader follows the first piece; {}", reader.log_text());

    // The first piece, sent again with what followed it.
    let mut longer = std::fs::read(&first).expect("first piece");
    longer.extend_from_slice(&second_bytes);
    let tmp = first.with_extension("tmp");
    std::fs::write(&tmp, &longer).expect("write");
    std::fs::rename(&tmp, &first).expect("replace");
    let mut got = Vec::new();
    for _ in 0..100 {
        got = reader.sql(ANSWER).await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want, "the rows of the longer piece, once; {}", reader.log_text());
    assert_eq!(reader.metric("tocsin_reader_refresh_failures_total").await, 0.0, "{}", reader.log_text());
}

/// Bytes of segment and pack files under a data directory.
fn segment_bytes(dir: &Path) -> u64 {
    segment_files(dir).iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

/// Waits (up to 5 s) until the segment files under `dir` take at most
/// `bound` bytes; returns how many they take.
async fn within_bound(dir: &Path, bound: u64) -> u64 {
    let mut held = segment_bytes(dir);
    for _ in 0..50 {
        if held <= bound {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = segment_bytes(dir);
    }
    panic!("the reader holds {held} bytes of segment files, its cache is {bound}");
}

const DAY: i64 = 86_400 * SEC;

/// `days` days of 4 hosts from `first_host`, 15,000 rows each a day, of values that do not
/// compress: each day's file is a few hundred KiB.
async fn write_days(writer: &TestServer, days: i64, first_host: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for day in 0..days {
        let series = (0..4)
            .map(|h| {
                let ts = (0..15_000).map(|i| T0 + day * DAY + i * 5 * SEC).collect();
                let v = (0..15_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 11) as f64 / (1u64 << 53) as f64
                    })
                    .collect();
                row_series(&[("host", &format!("h{}", first_host + h))], ts, vec![f64s("v", v)])
            })
            .collect();
        writer.client().await.write_rows(rows("cpu", series)).await.expect("write");
    }
}

/// A reader with a cache smaller than the copy fetches each segment file
/// as a query reads it, gives the writer's answers, and keeps at most its
/// bound on disk: the least recently read files go, and come back when
/// read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_keeps_at_most_its_cache_of_segment_files() {
    const DAYS: i64 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("reader.toml");
    std::fs::write(&cfg, "[storage]\nobject_store_interval = \"1s\"\ncache_mb = 1\n").expect("config");
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let writer =
        TestServer::start_in(&dir.path().join("w"), &["--config", &config(dir.path()), "--object-store", &bucket]);
    write_days(&writer, DAYS, 0).await;
    writer.persist().await;
    let copy = segment_bytes(&dir.path().join("w"));
    assert!(copy > 3 << 20, "the copy ({copy} bytes) is larger than the reader's cache");

    let rdir = dir.path().join("r");
    let reader = TestServer::start_in(
        &rdir,
        &["--config", cfg.to_str().expect("utf-8"), "--object-store", &bucket, "--role", "reader"],
    );
    // min and max: a sum of floats may differ in its last bit with the order.
    let whole = "SELECT host, count(*) AS n, min(v) AS lo, max(v) AS hi FROM cpu GROUP BY host ORDER BY host";
    let rows = converges(&reader, &writer, whole).await;
    assert_eq!(rows[0]["n"], 15_000 * DAYS, "{rows:?}");
    let day = |d: i64| {
        format!(
            "SELECT count(*) AS n, min(v) AS lo, max(v) AS hi FROM cpu WHERE ts >= to_timestamp_nanos({}) AND ts < \
             to_timestamp_nanos({})",
            T0 + d * DAY,
            T0 + (d + 1) * DAY
        )
    };
    for d in 0..DAYS {
        assert_eq!(reader.sql(&day(d)).await, writer.sql(&day(d)).await, "day {d}");
    }
    // Past the queries that read them, the files over the bound are deleted
    // (at the next refresh).
    let held = within_bound(&rdir, 1 << 20).await;
    assert!(held > 0, "it keeps what it read last");
    let fetched = reader.metric("tocsin_segment_cache_fetches_total").await;
    assert!(fetched >= DAYS as f64, "every day's file was fetched: {fetched}");
    assert!(reader.metric("tocsin_segment_cache_evictions_total").await >= 1.0);
    assert!(reader.metric("tocsin_segment_cache_bytes").await <= (1 << 20) as f64);
    assert_eq!(reader.metric("tocsin_segment_cache_limit_bytes").await, (1 << 20) as f64);
    // The first day's file was evicted: read again, it is fetched again.
    assert_eq!(reader.sql(&day(0)).await, writer.sql(&day(0)).await);
    assert!(reader.metric("tocsin_segment_cache_fetches_total").await > fetched);
    assert_eq!(reader.metric("tocsin_reader_refresh_failures_total").await, 0.0, "{}", reader.log_text());

    // Restarted, it answers from the files it kept and those it fetches.
    drop(reader);
    let reader = TestServer::start_in(
        &rdir,
        &["--config", cfg.to_str().expect("utf-8"), "--object-store", &bucket, "--role", "reader"],
    );
    assert_eq!(reader.sql(whole).await, writer.sql(whole).await);
    assert!(segment_bytes(&rdir) <= copy);

    // A file the bucket cannot give fails the query that needs it, with a
    // status to retry on, and nothing else.
    reader.sql(&day(DAYS - 1)).await;
    within_bound(&rdir, 1 << 20).await;
    let cached: Vec<std::path::PathBuf> =
        segment_files(&rdir).iter().filter_map(|p| p.strip_prefix(&rdir).ok().map(Path::to_path_buf)).collect();
    let copy_dir = dir.path().join("bucket");
    let index: Value =
        serde_json::from_slice(&std::fs::read(copy_dir.join("backup.json")).expect("the copy's index")).expect("json");
    let (path, stored) = index["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| Some((f["path"].as_str()?, f["stored"].as_str().or(f["path"].as_str())?)))
        .find(|(path, _)| path.ends_with(".parquet") && !cached.iter().any(|c| c == Path::new(path)))
        .expect("a file of the copy that the reader does not hold");
    let gone = copy_dir.join(stored);
    // Out of the bucket: the writer's next push prunes what its index does
    // not list under its own folder, which a name beside the file was.
    let aside = dir.path().join("aside.parquet");
    std::fs::rename(&gone, &aside).expect("move aside");
    let (status, body) = reader.sql_raw(whole).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("could not be fetched") && body.to_string().contains(path), "{body}");
    assert_eq!(reader.sql(&day(DAYS - 1)).await, writer.sql(&day(DAYS - 1)).await, "the files it holds still answer");
    std::fs::rename(&aside, &gone).expect("put back");
    assert_eq!(reader.sql(whole).await, writer.sql(whole).await);
}

/// A reader that still answers from an earlier copy (it refreshes once an
/// hour here) fetches the files of that copy after the writer's compaction
/// replaced them: the writer keeps them in the bucket for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_on_an_earlier_copy_still_fetches_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = format!("file://{}", dir.path().join("bucket").display());
    let writer =
        TestServer::start_in(&dir.path().join("w"), &["--config", &config(dir.path()), "--object-store", &bucket]);
    let whole = "SELECT host, count(*) AS n, min(v) AS lo, max(v) AS hi FROM cpu GROUP BY host ORDER BY host";
    // Three persists of the same days: three files per day to merge.
    for round in 0..3 {
        write_days(&writer, 2, 4 * round).await;
        writer.persist().await;
    }
    let index = |dir: &Path| -> Value {
        serde_json::from_slice(&std::fs::read(dir.join("bucket/backup.json")).unwrap_or_default()).unwrap_or_default()
    };
    // The copy holds the persisted files.
    let persisted = segment_files(&dir.path().join("w")).len();
    for _ in 0..100 {
        let files = index(dir.path())["files"].as_array().cloned().unwrap_or_default();
        if files.iter().filter(|f| f["path"].as_str().is_some_and(|p| p.ends_with(".parquet"))).count() == persisted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = dir.path().join("slow.toml");
    std::fs::write(&cfg, "[storage]\nobject_store_interval = \"1h\"\ncache_mb = 64\n").expect("config");
    let reader = TestServer::start_in(
        &dir.path().join("r"),
        &["--config", cfg.to_str().expect("utf-8"), "--object-store", &bucket, "--role", "reader"],
    );
    let before = writer.sql(whole).await;
    assert_eq!(before.len(), 12, "{before:?}");
    // It has read no file yet.
    assert_eq!(reader.metric("tocsin_segment_cache_fetches_total").await, 0.0);

    let merged = writer.compact_full().await;
    assert!(merged["merges"].as_u64().unwrap_or(0) >= 1, "a merge ran: {merged}");
    let mut lingering = Vec::new();
    for _ in 0..100 {
        lingering = index(dir.path())["lingering"].as_array().cloned().unwrap_or_default();
        if !lingering.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!lingering.is_empty(), "the writer's copy keeps the merged files: {}", index(dir.path()));
    // Only now does the reader read the files of the copy it loaded.
    assert_eq!(reader.sql(whole).await, before, "{}", reader.log_text());
    assert_eq!(writer.sql(whole).await, before);
    assert!(reader.metric("tocsin_segment_cache_fetches_total").await >= 3.0);
}

/// For a writer in `dir/w` with its segments in the bucket `dir/bucket`
/// (a cache of 1 MiB, pushes every second, no background merges, replaced
/// files kept for `grace`): its config file and the bucket's URL.
fn segments_in_bucket(dir: &Path, grace: &str) -> (String, String) {
    let cfg = dir.join("writer.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\nobject_store_interval = \"1s\"\nsegments = \"object-store\"\ncache_mb = 1\n\n\
             [compaction]\nenabled = false\ngrace = \"{grace}\"\n"
        ),
    )
    .expect("config");
    (cfg.to_str().expect("utf-8").to_string(), format!("file://{}", dir.join("bucket").display()))
}

/// A writer of `segments = "object-store"` keeps at most its cache of the
/// segment files its copy holds: it answers from the bucket for the
/// others, merges them, backs them up, and a server started from the copy
/// on an empty data directory fetches none of them until read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_its_segments_in_the_bucket_keeps_at_most_its_cache() {
    const DAYS: i64 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, bucket) = segments_in_bucket(dir.path(), "0s");
    let wdir = dir.path().join("w");
    let mut writer = TestServer::start_in(&wdir, &["--config", &cfg, "--object-store", &bucket]);
    let whole = "SELECT host, count(*) AS n, min(v) AS lo, max(v) AS hi FROM cpu GROUP BY host ORDER BY host";
    let day = |d: i64| {
        format!(
            "SELECT count(*) AS n, min(v) AS lo, max(v) AS hi FROM cpu WHERE ts >= to_timestamp_nanos({}) AND ts < \
             to_timestamp_nanos({})",
            T0 + d * DAY,
            T0 + (d + 1) * DAY
        )
    };
    write_days(&writer, DAYS, 0).await;
    writer.persist().await;
    // Answers while every file is on disk.
    let want = writer.sql(whole).await;
    assert_eq!(want.len(), 4);
    assert!(want.iter().all(|r| r["n"] == 15_000 * DAYS), "{want:?}");
    let mut days = Vec::new();
    for d in 0..DAYS {
        days.push(writer.sql(&day(d)).await);
    }
    let data = writer.metric("tocsin_segment_bytes").await;
    assert!(data > (3 << 20) as f64, "the data ({data} bytes) is larger than the cache");

    // Once pushed, the files past the bound leave the disk; every answer
    // stays the same.
    within_bound(&wdir, 1 << 20).await;
    assert!(writer.metric("tocsin_segment_cache_evictions_total").await >= 1.0, "{}", writer.log_text());
    assert_eq!(writer.sql(whole).await, want);
    for (d, answer) in days.iter().enumerate() {
        assert_eq!(&writer.sql(&day(d as i64)).await, answer, "day {d}");
    }
    assert!(writer.metric("tocsin_segment_cache_fetches_total").await >= DAYS as f64);
    assert_eq!(writer.metric("tocsin_segment_cache_limit_bytes").await, (1 << 20) as f64);
    within_bound(&wdir, 1 << 20).await;

    // New rows on the same days: a full compaction merges the files the
    // writer let go of with the new ones.
    write_days(&writer, DAYS, 4).await;
    writer.persist().await;
    let both = writer.sql(whole).await;
    assert_eq!(both.len(), 8);
    assert_eq!(&both[..4], &want[..], "hosts h0..h3 sort first");
    let fetched = writer.metric("tocsin_segment_cache_fetches_total").await;
    within_bound(&wdir, 1 << 20).await;
    let merged = writer.compact_full().await;
    assert!(merged["merges"].as_u64().is_some_and(|m| m >= 1), "{merged}");
    assert!(writer.metric("tocsin_segment_cache_fetches_total").await > fetched, "merge inputs came from the bucket");
    assert_eq!(writer.sql(whole).await, both);
    within_bound(&wdir, 1 << 20).await;

    // `tocsin backup` copies every file, those in the bucket too.
    let dest = dir.path().join("backup");
    let out = Command::new(BIN)
        .args(["backup", dest.to_str().expect("utf-8"), "--http-addr", &writer.http.to_string()])
        .env_remove("TOCSIN_TOKEN")
        .output()
        .expect("backup");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let restored = dir.path().join("restored");
    let out = Command::new(BIN)
        .args(["restore", dest.to_str().expect("utf-8"), "--data-dir", restored.to_str().expect("utf-8")])
        .output()
        .expect("restore");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(segment_bytes(&restored) > 3 << 20, "the backup holds the whole data");
    {
        let plain = TestServer::start_in(&restored, &[]);
        assert_eq!(plain.sql(whole).await, both);
    }

    // Stopped, then started from the copy on an empty data directory: no
    // segment file comes with the start, the answers come from the bucket.
    assert!(writer.terminate().success());
    drop(writer);
    // Its own directory does not start without the setting (it would miss
    // the files only the bucket has), and a repair would drop them.
    let err = TestServer::refused_start_with(&wdir, &["--object-store", &bucket]);
    assert!(err.contains("keeps its segment files in the bucket") && err.contains("tocsin restore"), "{err}");
    let out = Command::new(BIN).args(["repair", "--data-dir", wdir.to_str().expect("utf-8")]).output().expect("repair");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("a repair would drop them"), "{said}");
    let w2 = dir.path().join("w2");
    let next = TestServer::start_in(&w2, &["--config", &cfg, "--object-store", &bucket]);
    assert_eq!(segment_bytes(&w2), 0, "a start from the copy fetches no segment file");
    assert_eq!(next.sql(whole).await, both);
    within_bound(&w2, 1 << 20).await;
}

/// A file the writer let go of that the bucket then lost (removed by hand)
/// cannot be sent again: pushes go on with the rest and say so, the query
/// that needs it and the merge that would read it fail naming it, and a
/// restart is refused until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_bucket_lost_a_file_it_let_go_of_says_so_and_goes_on() {
    const DAYS: i64 = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, bucket) = segments_in_bucket(dir.path(), "10m");
    let bucket_dir = dir.path().join("bucket");
    let wdir = dir.path().join("w");
    let mut writer = TestServer::start_in(&wdir, &["--config", &cfg, "--object-store", &bucket]);
    write_days(&writer, DAYS, 0).await;
    writer.persist().await;
    let whole = "SELECT host, count(*) AS n, min(v) AS lo, max(v) AS hi FROM cpu GROUP BY host ORDER BY host";
    let want = writer.sql(whole).await;
    within_bound(&wdir, 1 << 20).await;

    // A file of the copy that is not on the writer's disk goes from the bucket.
    let index: Value =
        serde_json::from_slice(&std::fs::read(bucket_dir.join("backup.json")).expect("index")).expect("json");
    let (path, stored) = index["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| {
            Some((f["path"].as_str()?.to_string(), f["stored"].as_str().or(f["path"].as_str())?.to_string()))
        })
        .find(|(p, _)| p.ends_with(".parquet") && !wdir.join(p).exists())
        .expect("a file the writer let go of");
    let aside = dir.path().join("aside.parquet");
    std::fs::rename(bucket_dir.join(&stored), &aside).expect("move aside");

    // Pushes go on, and say what is lost.
    let pushes = writer.metric("tocsin_object_store_pushes_total").await;
    writer.metric_until("tocsin_object_store_lost_files", 1.0).await;
    writer.metric_until("tocsin_object_store_pushes_total", pushes + 2.0).await;
    assert!(writer.log_text().contains("gone from the bucket"), "{}", writer.log_text());
    let (status, body) = writer.sql_raw(whole).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains(&path) && body.to_string().contains("could not be fetched"), "{body}");
    // A merge that would read it is left as it was, and says so.
    write_days(&writer, DAYS, 4).await;
    writer.persist().await;
    let merged = writer.compact_full().await;
    assert!(merged["failed"].as_u64().is_some_and(|n| n >= 1), "{merged}");

    // Restarted on its data directory: refused, naming the file, until it
    // is back in the bucket.
    writer.kill9();
    drop(writer);
    let err = TestServer::refused_start_with(&wdir, &["--config", &cfg, "--object-store", &bucket]);
    assert!(err.contains("not in the bucket") && err.contains(&stored), "{err}");
    std::fs::rename(&aside, bucket_dir.join(&stored)).expect("put back");
    let writer = TestServer::start_in(&wdir, &["--config", &cfg, "--object-store", &bucket]);
    let now = writer.sql(whole).await;
    assert_eq!(&now[..4], &want[..], "{now:?}");
    writer.metric_until("tocsin_object_store_pushes_total", 1.0).await;
    assert_eq!(writer.metric("tocsin_object_store_lost_files").await, 0.0);
}
