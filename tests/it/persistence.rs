//! Segments round trip, graceful shutdown, torn WAL tails, corrupt segments
//! and the data directory lock, through the real binary.

use serde_json::{Value, json};

use crate::server::{BIN, TestServer};
use crate::util::*;

const QUERIES: &[&str] = &[
    "SELECT * FROM m ORDER BY host, ts",
    "SELECT host, count(*) AS n, sum(i) AS si, avg(f) AS af, max(s) AS ms, bool_or(b) AS bo FROM m GROUP BY host ORDER BY host",
    "SELECT count(*) AS n FROM m WHERE ts >= '2023-11-14T23:00:00Z' AND ts < '2023-11-15T00:00:00Z'",
    "SELECT time_bucket(INTERVAL '1 hour', ts) AS h, max(i) AS mi FROM m WHERE host = 'h1' GROUP BY h ORDER BY h",
];

async fn results(server: &TestServer) -> Vec<Vec<Value>> {
    answers(server, QUERIES).await
}

/// Each statement's answer, in order.
async fn answers(server: &TestServer, statements: &[&str]) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for q in statements {
        out.push(server.sql(q).await);
    }
    out
}

async fn write_hours(server: &TestServer, hours: i64) {
    let mut client = server.client().await;
    for h in 0..3 {
        let host = format!("h{h}");
        // One sample every 60 s for `hours` hours: several partitions.
        let n = hours * 60;
        let ts: Vec<i64> = (0..n).map(|i| T0 + i * 60 * SEC).collect();
        let req = rows(
            "m",
            vec![row_series(
                &[("host", &host)],
                ts,
                vec![
                    i64s("i", (0..n).map(|i| i * (h + 1)).collect()),
                    f64s("f", (0..n).map(|i| i as f64 / 4.0).collect()),
                    strs("s", (0..n).map(|i| if i % 2 == 0 { "even" } else { "odd" }).collect()),
                    tocsin_proto::v1::FieldColumn {
                        name: "b".into(),
                        values: Some(tocsin_proto::v1::field_column::Values::Bool(tocsin_proto::v1::BoolValues {
                            values: (0..n).map(|i| i % 3 == 0).collect(),
                        })),
                    },
                ],
            )],
        );
        let resp = client.write_rows(req).await.expect("write").into_inner();
        assert_eq!(resp.accepted_rows, n as u64);
    }
}

#[tokio::test]
async fn segments_return_the_same_answers_as_the_buffer_across_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // Hourly partitions, so that three hours of data make several segments.
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[storage]\npartition = \"1h\"\n").expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let mut server = TestServer::start_in(&dir, &["--config", &cfg]);
    write_hours(&server, 3).await;
    let before = results(&server).await;
    assert_eq!(before[2], vec![json!({"n": 3 * 60})], "one full hour per host");

    let stats = server.persist().await;
    assert!(stats["segments"].as_u64().unwrap_or(0) >= 3, "{stats}");
    assert_eq!(results(&server).await, before, "answers changed when the buffer became segments");

    // A column added after the first segments: old segments read it as NULL.
    let mut client = server.client().await;
    client
        .write_rows(rows("m", vec![row_series(&[("host", "h9")], vec![T0], vec![f64s("extra", vec![9.5])])]))
        .await
        .expect("write");
    let extra =
        server.sql("SELECT host, extra FROM m WHERE extra IS NOT NULL OR host = 'h0' ORDER BY ts, host LIMIT 2").await;
    assert_eq!(extra, vec![json!({"host": "h0", "extra": null}), json!({"host": "h9", "extra": 9.5})]);
    let full = server.sql("SELECT * FROM m ORDER BY host, ts").await;

    // Graceful shutdown persists the buffer and exits 0.
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    assert!(manifest["wal_persisted_upto"].as_u64().unwrap_or(0) >= 2, "{manifest}");

    let server = TestServer::start_in(&dir, &["--config", &cfg]);
    assert!(server.log_text().contains("replayed_rows=0"), "nothing left to replay after a clean shutdown");
    assert_eq!(server.sql("SELECT * FROM m ORDER BY host, ts").await, full);
    let n = server.sql("SELECT count(*) AS n FROM m WHERE host <> 'h9'").await;
    assert_eq!(n, vec![json!({"n": 3 * 3 * 60})]);
    // Segment files are Parquet sorted by tags then time, with our encodings.
    let segs = manifest["databases"]["public"]["m"]["segments"].as_array().cloned().unwrap_or_default();
    assert!(!segs.is_empty());
}

#[tokio::test]
async fn torn_wal_tail_is_cut_with_a_warning_and_nothing_acknowledged_is_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut server = TestServer::start_in(&dir, &[]);
    write_hours(&server, 1).await;
    server.kill9();
    let wal = std::fs::read_dir(dir.join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .max()
        .expect("a WAL file");
    let mut data = std::fs::read(&wal).expect("read");
    data.extend_from_slice(&[0xAB; 37]);
    std::fs::write(&wal, data).expect("write");

    let server = TestServer::start_in(&dir, &[]);
    let log = server.log_text();
    assert!(log.contains("37 bytes dropped"), "{log}");
    let n = server.sql("SELECT count(*) AS n FROM m").await;
    assert_eq!(n, vec![json!({"n": 3 * 60})]);
    let mut client = server.client().await;
    let resp = client
        .write_rows(rows("m", vec![row_series(&[("host", "h0")], vec![T0 - SEC], vec![i64s("i", vec![1])])]))
        .await
        .expect("write after recovery");
    assert_eq!(resp.into_inner().accepted_rows, 1);
}

#[tokio::test]
async fn corrupt_segment_is_quarantined_and_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut server = TestServer::start_in(&dir, &[]);
    write_hours(&server, 2).await;
    server.persist().await;
    assert!(server.terminate().success());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    let segs = manifest["databases"]["public"]["m"]["segments"].as_array().cloned().expect("segments");
    let victim = segs[0]["path"].as_str().expect("path").to_string();
    let victim_rows = segs[0]["rows"].as_u64().expect("rows");
    let path = dir.join(&victim);
    let len = std::fs::metadata(&path).expect("stat").len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(len / 2).expect("truncate");

    let server = TestServer::start_in(&dir, &[]);
    let log = server.log_text();
    assert!(log.contains(&victim) && log.contains("quarantine"), "{log}");
    let quarantined: Vec<_> = std::fs::read_dir(dir.join("quarantine")).expect("quarantine dir").collect();
    assert_eq!(quarantined.len(), 1);
    let n = server.sql("SELECT count(*) AS n FROM m").await;
    assert_eq!(n, vec![json!({"n": 3 * 2 * 60 - victim_rows})]);
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_refuses_and_says_why() {
    let server = TestServer::start();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another tocsin process"), "{err}");
}

#[tokio::test]
async fn bad_config_is_refused_with_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[storage]\nfsync = \"sometimes\"\n").expect("write");
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(tmp.path().join("d"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("storage.fsync"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn manifest_segments(dir: &std::path::Path, table: &str) -> Vec<Value> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    manifest["databases"]["public"][table]["segments"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn compaction_merges_each_partitions_segments_with_identical_answers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let cfg = tmp.path().join("tocsin.toml");
    // Hourly partitions; T0 is long past, so every partition is cold and
    // merges whole. Replaced files are deleted at once. The background round
    // runs at start only, so that this test's call does the merging.
    std::fs::write(&cfg, "[storage]\npartition = \"1h\"\n[compaction]\ngrace = \"0s\"\ninterval = \"1h\"\n")
        .expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let mut server = TestServer::start_in(&dir, &["--config", &cfg]);
    for _ in 0..3 {
        write_hours(&server, 3).await;
        server.persist().await;
    }
    let before = results(&server).await;
    // The same rows written three times count once (last write wins).
    assert_eq!(before[2], vec![json!({"n": 3 * 60})], "an hour of three hosts");
    let segments = manifest_segments(&dir, "m");
    let files: Vec<std::path::PathBuf> = segments.iter().map(|s| dir.join(s["path"].as_str().expect("path"))).collect();
    assert!(segments.len() >= 9, "three persists of three partitions: {}", segments.len());

    let stats = server.compact().await;
    assert_eq!(stats["inputs"], json!(segments.len()), "{stats}");
    let merged = manifest_segments(&dir, "m");
    let partitions: std::collections::BTreeSet<i64> =
        segments.iter().map(|s| s["partition_start"].as_i64().expect("partition")).collect();
    assert_eq!(merged.len(), partitions.len(), "{merged:?}");
    assert!(merged.iter().all(|s| s["level"].as_u64().unwrap_or(0) >= 1), "{merged:?}");
    assert_eq!(results(&server).await, before, "answers changed by compaction");
    assert!(files.iter().all(|f| !f.exists()), "replaced segment files are deleted after the (zero) grace");
    let metrics = reqwest::get(format!("http://{}/metrics", server.http)).await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    let compacted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tocsin_storage_compacted_segments_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert_eq!(compacted, Some(segments.len() as u64), "{metrics}");

    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let server = TestServer::start_in(&dir, &["--config", &cfg]);
    assert_eq!(results(&server).await, before, "answers changed across a restart after compaction");
}

#[tokio::test]
async fn a_full_compaction_merges_todays_partition_and_refuses_a_bad_flag() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[compaction]\ngrace = \"0s\"\ninterval = \"1h\"\n").expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let server = TestServer::start_in(&dir, &["--config", &cfg]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as i64;
    let mut client = server.client().await;
    for i in 0..3 {
        let ts = vec![now - (60 - i) * SEC];
        client
            .write_rows(rows("m", vec![row_series(&[("host", "a")], ts, vec![i64s("i", vec![i])])]))
            .await
            .expect("write");
        server.persist().await;
    }
    assert_eq!(manifest_segments(&dir, "m").len(), 3);
    let before = server.sql("SELECT host, i FROM m ORDER BY ts").await;
    // Today is live and three segments are below the fan-in of four.
    assert_eq!(server.compact().await["inputs"], json!(0));
    let stats = server.compact_full().await;
    assert_eq!((stats["merges"].clone(), stats["inputs"].clone()), (json!(1), json!(3)), "{stats}");
    assert_eq!(manifest_segments(&dir, "m").len(), 1);
    assert_eq!(server.sql("SELECT host, i FROM m ORDER BY ts").await, before);

    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/admin/compact?full=maybe", server.http))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("a JSON error like every other");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("full")), "the refusal names the parameter: {body}");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/admin/compact?FULL=true", server.http))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST, "a misspelt flag is not a plain round");
}

#[tokio::test]
async fn retention_drops_old_partitions_and_keeps_recent_rows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[retention]\ndefault = \"7d\"\n[compaction]\ngrace = \"0s\"\ninterval = \"1h\"\n")
        .expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let server = TestServer::start_in(&dir, &["--config", &cfg]);
    write_hours(&server, 1).await; // at T0, in 2023: past the 7 days
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as i64;
    let mut client = server.client().await;
    client
        .write_rows(rows("m", vec![row_series(&[("host", "recent")], vec![now - 60 * SEC], vec![i64s("i", vec![42])])]))
        .await
        .expect("write");
    server.persist().await;
    assert_eq!(server.sql("SELECT count(*) AS n FROM m").await, vec![json!({"n": 3 * 60 + 1})]);
    // Fill the last-row cache with the old hosts too.
    let lastpoint = "SELECT DISTINCT ON (host) host, i FROM m ORDER BY host, ts DESC";
    assert_eq!(server.sql(lastpoint).await.len(), 4);
    let old_files: Vec<std::path::PathBuf> = manifest_segments(&dir, "m")
        .iter()
        .filter(|s| s["max_ts"].as_i64().unwrap_or(i64::MAX) < now - 7 * 86_400 * SEC)
        .map(|s| dir.join(s["path"].as_str().expect("path")))
        .collect();
    assert!(!old_files.is_empty());

    let stats = server.compact().await;
    assert_eq!(stats["expired_segments"], json!(old_files.len()), "{stats}");
    assert_eq!(stats["expired_rows"], json!(3 * 60), "{stats}");
    assert_eq!(server.sql("SELECT host, i FROM m").await, vec![json!({"host": "recent", "i": 42})]);
    assert_eq!(server.sql(lastpoint).await, vec![json!({"host": "recent", "i": 42})], "lastpoint forgot them too");
    assert!(old_files.iter().all(|f| !f.exists()), "expired files deleted after the (zero) grace");
    let metrics = reqwest::get(format!("http://{}/metrics", server.http)).await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(metrics.contains(&format!("tocsin_storage_expired_rows_total {}", 3 * 60)), "{metrics}");
}

/// `DELETE` through the SQL endpoint: the rows are gone from every answer
/// at once (lastpoint too), after a restart, and after a compaction, which
/// removes them from the files and drops the tombstones.
#[tokio::test]
async fn delete_hides_rows_at_once_across_a_restart_and_compaction_removes_them_from_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[storage]\npartition = \"1h\"\n[compaction]\ngrace = \"0s\"\n").expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let mut server = TestServer::start_in(&dir, &["--config", &cfg]);
    write_hours(&server, 3).await;
    server.persist().await;
    let hour = 3_600 * SEC;
    let counts = "SELECT host, count(*) AS n, sum(i) AS si FROM m GROUP BY host ORDER BY host";
    let lastpoint = "SELECT DISTINCT ON (host) host, ts FROM m ORDER BY host, ts DESC";
    let before = server.sql(counts).await;
    assert_eq!(server.sql(lastpoint).await.len(), 3, "the last-row cache holds every host");

    let second_hour = format!(
        "DELETE FROM m WHERE host = 'h1' AND ts >= to_timestamp_nanos({}) AND ts < to_timestamp_nanos({})",
        T0 + hour,
        T0 + 2 * hour
    );
    assert_eq!(server.sql(&second_hour).await, vec![json!({"count": 60})]);
    let last_hour = format!("DELETE FROM m WHERE host IN ('h2') AND ts >= to_timestamp_nanos({})", T0 + 2 * hour);
    assert_eq!(server.sql(&last_hour).await, vec![json!({"count": 60})]);
    assert_eq!(server.sql(&second_hour).await, vec![json!({"count": 0})], "already deleted");
    let (status, body) = server.sql_raw("DELETE FROM m WHERE i > 3").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("tags"), "{body}");

    let after = server.sql(counts).await;
    assert_eq!(after[0], before[0], "h0 untouched");
    assert_eq!(after[1]["n"], json!(120));
    assert_eq!(after[2]["n"], json!(120));
    let newest = server.sql(lastpoint).await;
    assert_eq!(newest[2]["host"], json!("h2"));
    let h2_newest = server.sql("SELECT max(ts) AS ts FROM m WHERE host = 'h2'").await;
    assert_eq!(newest[2]["ts"], h2_newest[0]["ts"], "lastpoint forgot the deleted rows: {newest:?}");
    assert_eq!(server.metric("tocsin_storage_deleted_rows_total").await, 120.0);

    // Recorded in the manifest: a restart keeps the rows deleted.
    assert!(server.terminate().success());
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    assert!(manifest.contains("\"tombstones\"") && manifest.contains("\"version\": 3"), "{manifest}");
    let server = TestServer::start_in(&dir, &["--config", &cfg]);
    assert_eq!(server.sql(counts).await, after);
    assert_eq!(server.sql(lastpoint).await, newest);

    // Compaction writes the files again without the rows.
    server.compact_full().await;
    assert_eq!(server.sql(counts).await, after);
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    assert!(!manifest.contains("tombstones"), "every covered segment was rewritten: {manifest}");
    let on_disk: u64 = manifest_segments(&dir, "m").iter().map(|s| s["rows"].as_u64().unwrap_or(0)).sum();
    assert_eq!(on_disk, 3 * 180 - 120, "the deleted rows left the files");

    // Flight SQL's update answers the count too.
    let mut flight = crate::flight::client(&server).await;
    let first = format!("DELETE FROM m WHERE host = 'h0' AND ts <= to_timestamp_nanos({T0})");
    assert_eq!(flight.execute_update(first, None).await.expect("DELETE over Flight SQL"), 1);
    assert_eq!(server.sql(counts).await[0]["n"], json!(179));
}

/// Line protocol written to `db` over HTTP, as Telegraf sends it.
async fn write_lines(server: &TestServer, lines: &str) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/write?db=public&precision=s", server.http))
        .body(lines.to_string())
        .send()
        .await
        .expect("write");
    assert_eq!(resp.status().as_u16(), 204, "{}", resp.text().await.unwrap_or_default());
}

const LWW: &[&str] = &[
    "SELECT host, ts, usage FROM cpu ORDER BY host, ts",
    "SELECT host, count(*) AS n, sum(usage) AS s FROM cpu GROUP BY host ORDER BY host",
    "SELECT count(*) AS n FROM cpu WHERE usage >= 50",
];

async fn lww_answers(server: &TestServer) -> Vec<Vec<Value>> {
    answers(server, LWW).await
}

/// A client that retries a write it got no answer for, and a correction
/// of one point: each series and time counts once, with its last written
/// value, in the buffer, in segments, after kill -9 and after compaction.
#[tokio::test]
async fn rows_written_again_count_once_with_their_last_value_through_restarts_and_compaction() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(&cfg, "[storage]\npartition = \"1h\"\n[compaction]\ngrace = \"0s\"\ninterval = \"1h\"\n")
        .expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let mut server = TestServer::start_in(&dir, &["--config", &cfg]);
    let t0 = T0 / SEC;
    // Two hosts, 90 minutes (two partitions), usage 10 or 20.
    let batch: String = (0..90)
        .flat_map(|i| {
            ["a", "b"].map(|h| format!("cpu,host={h} usage={} {}\n", if h == "a" { 10 } else { 20 }, t0 + i * 60))
        })
        .collect();
    write_lines(&server, &batch).await;
    server.persist().await;
    write_lines(&server, &batch).await; // the retry
    let want_counts = vec![json!({"host": "a", "n": 90, "s": 900.0}), json!({"host": "b", "n": 90, "s": 1800.0})];
    let buffered = lww_answers(&server).await;
    assert_eq!(buffered[1], want_counts, "a retried batch counts once");
    server.persist().await;
    assert_eq!(lww_answers(&server).await, buffered, "the same from segments");
    // A correction of a@t0+60 written twice more, the last one wins; left
    // in the WAL, then kill -9.
    let fix = format!("cpu,host=a usage=70 {}\ncpu,host=a usage=60 {}\n", t0 + 60, t0 + 60);
    write_lines(&server, &fix).await;
    let corrected = lww_answers(&server).await;
    assert_eq!(corrected[2], vec![json!({"n": 1})], "{corrected:?}");
    assert_eq!(corrected[1][0], json!({"host": "a", "n": 90, "s": 950.0}));
    assert_eq!(
        corrected[0][1],
        json!({"host": "a", "ts": "2023-11-14T22:14:20+00:00", "usage": 60.0}),
        "{:?}",
        corrected[0][1]
    );
    server.kill9();
    let mut server = TestServer::start_in(&dir, &["--config", &cfg]);
    assert_eq!(lww_answers(&server).await, corrected, "the same after kill -9 and the WAL replay");
    server.persist().await;
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    let overlapping = &manifest["databases"]["public"]["cpu"]["overlapping"];
    assert!(overlapping.as_array().is_some_and(|p| !p.is_empty()), "{manifest}");
    assert!(server.metric("tocsin_storage_overlapping_partitions").await >= 1.0);
    let stats = server.compact().await;
    assert!(stats["merges"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert_eq!(lww_answers(&server).await, corrected, "the same after compaction");
    assert_eq!(server.metric("tocsin_storage_overlapping_partitions").await, 0.0);
    let rows: u64 = manifest_segments(&dir, "cpu").iter().map(|s| s["rows"].as_u64().unwrap_or(0)).sum();
    assert_eq!(rows, 180, "compaction kept one row per series and time");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    assert!(manifest["databases"]["public"]["cpu"].get("overlapping").is_none(), "{manifest}");
    assert!(server.terminate().success());
}
