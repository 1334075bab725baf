//! `tocsin backup` and `tocsin restore` as an operator runs them, against a
//! server under write load with persists and merges running.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use serde_json::{Value, json};

use crate::server::{BIN, TestServer};
use crate::util::*;

/// Runs `tocsin ARGS`; returns (success, stdout, stderr).
fn tocsin(args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("TOCSIN_TOKEN").env_remove("TOCSIN_DATA_DIR");
    if let Some(t) = token {
        cmd.env("TOCSIN_TOKEN", t);
    }
    let out = cmd.output().expect("run tocsin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn backup(server: &TestServer, dest: &Path) -> String {
    let (ok, out, err) = tocsin(
        &["backup", dest.to_str().expect("utf-8"), "--http-addr", &server.http.to_string()],
        server.token.as_deref(),
    );
    assert!(ok, "backup failed: {err}{out}");
    out
}

fn restore(src: &Path, dir: &Path) -> (bool, String) {
    let (ok, out, err) =
        tocsin(&["restore", src.to_str().expect("utf-8"), "--data-dir", dir.to_str().expect("utf-8")], None);
    (ok, format!("{out}{err}"))
}

/// `copied N (...)` and `reused M` of a backup's summary line.
fn copied_and_reused(summary: &str) -> (u64, u64) {
    let number_after = |word: &str| -> u64 {
        let rest = &summary[summary.find(word).unwrap_or_else(|| panic!("no {word:?} in {summary}")) + word.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("number")
    };
    (number_after("copied"), number_after("reused"))
}

/// `backup` off the async runtime, so that the writer goes on meanwhile.
async fn backup_in_background(server: &TestServer, dest: &Path) -> String {
    let (http, token, dest) = (server.http.to_string(), server.token.clone(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let (ok, out, err) = tocsin(&["backup", dest.to_str().expect("utf-8"), "--http-addr", &http], token.as_deref());
        assert!(ok, "backup failed: {err}{out}");
        out
    })
    .await
    .expect("backup task")
}

/// Writes rows `id = 0, 1, 2, ...` one request at a time until stopped;
/// `acked` is the highest id acknowledged so far (ids are acknowledged in
/// order, so every id up to it was).
async fn write_until_stopped(grpc: std::net::SocketAddr, stop: Arc<AtomicBool>, acked: Arc<AtomicI64>) {
    let mut client =
        tocsin_proto::v1::ingest_client::IngestClient::connect(format!("http://{grpc}")).await.expect("connect gRPC");
    let mut id = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let req = rows(
            "load",
            vec![row_series(
                &[("host", &format!("h{}", id % 7))],
                vec![T0 + id * 60 * SEC],
                vec![i64s("id", vec![id]), f64s("v", vec![id as f64 * 0.5])],
            )],
        );
        let resp = client.write_rows(req).await.expect("write").into_inner();
        assert_eq!(resp.accepted_rows, 1);
        acked.store(id, Ordering::Release);
        id += 1;
    }
}

const ANSWERS: &[&str] = &[
    "SELECT count(*) AS n, count(DISTINCT id) AS d, sum(v) AS s, min(ts) AS lo, max(ts) AS hi FROM load WHERE id <= {K}",
    "SELECT host, count(*) AS n, max(v) AS m FROM load WHERE id <= {K} GROUP BY host ORDER BY host",
    "SELECT id, host, v FROM load WHERE id <= {K} AND id % 97 = 0 ORDER BY id",
];

async fn answers(server: &TestServer, k: i64) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for q in ANSWERS {
        out.push(server.sql(&q.replace("{K}", &k.to_string())).await);
    }
    out
}

/// Two backups taken while rows are written and persists and merges run:
/// the second copies only what is new, and the restored copy holds every
/// write acknowledged before the backup started, once, with the same
/// answers as the live server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_every_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(
        &cfg,
        // A minute between rows and hour partitions: the writer leaves a
        // partition every 60 rows, and compaction merges each past one into
        // one segment that stays (packs off, so that it is a file of its own).
        "[storage]\npartition = \"1h\"\npersist_max_age = \"300ms\"\npack_max_rows = 0\n\
         [compaction]\nfan_in = 2\ninterval = \"200ms\"\ngrace = \"0s\"\n",
    )
    .expect("config");
    let server = TestServer::start_in(&tmp.path().join("data"), &["--config", cfg.to_str().expect("utf-8")]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicI64::new(-1));
    let writer = tokio::spawn(write_until_stopped(server.grpc, Arc::clone(&stop), Arc::clone(&acked)));
    let dest = tmp.path().join("backup");
    let before = {
        // Let rows reach segments first, so that the second backup has
        // something to reuse.
        server.metric_until("tocsin_storage_persists_total", 2.0).await;
        let first = backup_in_background(&server, &dest).await;
        assert!(first.contains("reused 0"), "{first}");
        server.metric_until("tocsin_storage_persists_total", 6.0).await;
        let before = acked.load(Ordering::Acquire);
        let second = backup_in_background(&server, &dest).await;
        let (copied, reused) = copied_and_reused(&second);
        assert!(reused > 0, "the second backup reuses the first one's segments: {second}");
        let index: Value =
            serde_json::from_slice(&std::fs::read(dest.join("backup.json")).expect("index")).expect("json");
        let files = index["files"].as_array().expect("files");
        let listed = files.len() as u64;
        assert_eq!(copied + reused, listed, "{second}");
        // The audit log travels as pieces: one stored file each.
        let stored: u64 = files.iter().map(|f| f["parts"].as_array().map_or(1, |p| p.len() as u64)).sum();
        // Every file of the directory is in the index (the first backup's
        // files that compaction replaced were removed).
        let mut on_disk = 0;
        for e in walk(&dest) {
            let rel = e.strip_prefix(&dest).expect("under dest").to_string_lossy().into_owned();
            if rel != "backup.json" && rel != ".lock" {
                on_disk += 1;
            }
        }
        assert_eq!(on_disk, stored, "files in the backup directory but not in its index");
        stop.store(true, Ordering::Release);
        before
    };
    writer.await.expect("writer");
    assert!(before > 50, "the writer made progress before the backup ({before})");
    let live = answers(&server, before).await;
    assert_eq!(live[0][0]["n"], json!(before + 1));

    let restored_dir = tmp.path().join("restored");
    let (ok, out) = restore(&dest, &restored_dir);
    assert!(ok, "{out}");
    assert!(out.contains("holds every write"), "{out}");
    assert!(!restored_dir.join("RESTORE-INCOMPLETE").exists());
    let restored = TestServer::start_in(&restored_dir, &[]);
    assert_eq!(restored.sql("SELECT count(*) - count(DISTINCT id) AS dup FROM load").await, vec![json!({"dup": 0})]);
    assert_eq!(answers(&restored, before).await, live, "the restored copy answers as the live server did");
    let max: i64 = restored.sql("SELECT max(id) AS m FROM load").await[0]["m"].as_i64().expect("max id");
    assert!(max <= acked.load(Ordering::Acquire) + 1, "rows that were never written: {max}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry")) {
        if e.file_type().expect("type").is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// A damaged backup file stops the restore, naming the file, and the
/// unfinished data directory is refused by the server; restores never write
/// into a used directory, and backups never among other files.
#[tokio::test]
async fn damage_is_found_and_unfinished_restores_do_not_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_in(&tmp.path().join("data"), &[]);
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'a', 1.5)").await;
    server.persist().await;
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'b', 2.5)").await;

    // Not among other files.
    let crowded = tmp.path().join("crowded");
    std::fs::create_dir_all(&crowded).expect("mkdir");
    std::fs::write(crowded.join("notes.txt"), "mine").expect("write");
    let (ok, _, err) =
        tocsin(&["backup", crowded.to_str().expect("utf-8"), "--http-addr", &server.http.to_string()], None);
    assert!(!ok && err.contains("holds no backup.json"), "{err}");
    assert!(crowded.join("notes.txt").exists(), "nothing of the operator's was removed");

    let dest = tmp.path().join("backup");
    backup(&server, &dest);
    let index: Value = serde_json::from_slice(&std::fs::read(dest.join("backup.json")).expect("index")).expect("json");
    let segment = index["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_string())
        .find(|p| p.ends_with(".parquet"))
        .expect("a segment in the backup");

    // Into a used directory: refused, and it is left alone.
    let (ok, out) = restore(&dest, &crowded);
    assert!(!ok && out.contains("is not empty"), "{out}");

    // A flipped byte in a segment.
    let path = dest.join(&segment);
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).expect("write");
    let target = tmp.path().join("restored");
    let (ok, out) = restore(&dest, &target);
    assert!(!ok, "{out}");
    assert!(out.contains(&segment) && out.contains("damaged"), "the error names the file: {out}");
    let refusal = TestServer::refused_start(&target);
    assert!(refusal.contains("restore that did not finish"), "{refusal}");

    // Not a backup at all.
    let (ok, out) = restore(&crowded, &tmp.path().join("other"));
    assert!(!ok && out.contains("holds no backup.json"), "{out}");
}

/// A backup that fails half-way leaves the previous one whole; a backup of
/// another server does not replace one without `--replace`; backups stay
/// out of the data directory and restores out of the backup.
#[tokio::test]
async fn failed_or_mistaken_backups_leave_the_previous_one_whole() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_in(&tmp.path().join("data"), &[]);
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'a', 1.5)").await;
    server.persist().await;
    let dest = tmp.path().join("backup");
    backup(&server, &dest);
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'b', 2.5)").await;
    server.persist().await;

    // Files that changed (the manifest, the state) go under versions/: a
    // file in the way there makes the backup fail after it copied the new
    // segments.
    std::fs::write(dest.join("versions"), "in the way").expect("write");
    let (ok, _, err) =
        tocsin(&["backup", dest.to_str().expect("utf-8"), "--http-addr", &server.http.to_string()], None);
    assert!(!ok && err.contains("in the way"), "{err}");
    std::fs::remove_file(dest.join("versions")).expect("rm");
    let target = tmp.path().join("restored");
    let (ok, out) = restore(&dest, &target);
    assert!(ok, "the first backup is still whole: {out}");
    let restored = TestServer::start_in(&target, &[]);
    assert_eq!(restored.sql("SELECT host FROM cpu ORDER BY host").await, vec![json!({"host": "a"})]);
    drop(restored);

    // Another server into the same place: refused, then --replace.
    let other = TestServer::start_in(&tmp.path().join("other"), &[]);
    let args = ["backup", dest.to_str().expect("utf-8"), "--http-addr", &other.http.to_string()];
    let (ok, _, err) = tocsin(&args, None);
    assert!(!ok && err.contains("another data directory") && err.contains("--replace"), "{err}");
    assert!(dest.join("manifest.json").exists() || dest.join("versions").exists(), "nothing removed");
    let (ok, out, err) = tocsin(&[&args[..], &["--replace"]].concat(), None);
    assert!(ok, "{out}{err}");

    // Inside the data directory; a restore inside the backup.
    let inside = server.data_dir.join("backups").join("nightly");
    let (ok, _, err) =
        tocsin(&["backup", inside.to_str().expect("utf-8"), "--http-addr", &server.http.to_string()], None);
    assert!(!ok && err.contains("inside the server's data directory"), "{err}");
    let (ok, out) = restore(&dest, &dest.join("restored"));
    assert!(!ok && out.contains("inside the backup"), "{out}");
}

/// Users, tokens, silences and rule files come back with the rows; only an
/// admin may take a backup.
#[tokio::test]
async fn a_restored_server_keeps_its_tokens_silences_and_rules() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(rules.join("team")).expect("mkdir");
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: Hot\n        sql: SELECT host, max(usage) AS value FROM cpu GROUP BY host\n        thresholds: { critical: \"> 90\" }\n";
    std::fs::write(rules.join("hot.yml"), yaml).expect("rules");
    // Only the files the rules loader reads leave the host.
    std::fs::write(rules.join(".env"), "SECRET=1").expect("write");
    std::fs::write(rules.join("team/notes.yml"), "not loaded").expect("write");
    let (server, admin) = crate::auth::start(tmp.path(), "");
    drop(server);
    let server = TestServer::start_in(&tmp.path().join("data"), &["--auth", "--rules", rules.to_str().expect("utf-8")])
        .with_admin_token();
    server.sql("INSERT INTO cpu (ts, host, usage) VALUES (now(), 'a', 50.5)").await;
    let http = reqwest::Client::new();
    let now = chrono::Utc::now();
    let silence = json!({
        "matchers": [{"name": "host", "value": "a", "isRegex": false, "isEqual": true}],
        "startsAt": now.to_rfc3339(), "endsAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "createdBy": "ops", "comment": "maintenance"
    });
    let made: Value = http
        .post(format!("http://{}/api/v2/silences", server.http))
        .bearer_auth(&admin)
        .json(&silence)
        .send()
        .await
        .expect("silence")
        .json()
        .await
        .expect("json");
    let id = made["silenceID"].as_str().expect("silenceID").to_string();

    let dest = tmp.path().join("backup");
    let (ok, _, err) =
        tocsin(&["backup", dest.to_str().expect("utf-8"), "--http-addr", &server.http.to_string()], None);
    assert!(!ok && err.contains("401"), "no token, no backup: {err}");
    let reader = crate::auth::create_token(&server, &admin, "viewer", &[]);
    let (ok, _, err) =
        tocsin(&["backup", dest.to_str().expect("utf-8"), "--http-addr", &server.http.to_string()], Some(&reader));
    assert!(!ok && err.contains("403"), "a viewer may not take a backup: {err}");
    // An admin of one database would get every database and the users'
    // credentials.
    let one_db = crate::auth::create_token(&server, &admin, "admin", &["--db", "other"]);
    let (ok, _, err) =
        tocsin(&["backup", dest.to_str().expect("utf-8"), "--http-addr", &server.http.to_string()], Some(&one_db));
    assert!(!ok && err.contains("403") && err.contains("limited"), "{err}");
    backup(&server, &dest);
    drop(server);

    let target = tmp.path().join("restored");
    let (ok, out) = restore(&dest, &target);
    assert!(ok, "{out}");
    assert!(out.contains("--rules") && out.contains("--auth"), "the restore says how to start it: {out}");
    assert!(!target.join("admin-token").exists(), "no live admin secret in backups");
    assert_eq!(std::fs::read_to_string(target.join("rules/hot.yml")).expect("rule file"), yaml);
    assert!(!target.join("rules/.env").exists() && !target.join("rules/team").exists());
    let restored = TestServer::start_in(&target, &["--auth", "--rules", target.join("rules").to_str().expect("utf-8")]);
    let silences: Value = http
        .get(format!("http://{}/api/v2/silences", restored.http))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(
        silences.as_array().expect("list").iter().any(|s| s["id"] == json!(id)),
        "the silence came back: {silences}"
    );
    let rows: Value = http
        .post(format!("http://{}/api/v1/sql", restored.http))
        .bearer_auth(&admin)
        .json(&json!({"sql": "SELECT host, usage FROM cpu"}))
        .send()
        .await
        .expect("sql")
        .json()
        .await
        .expect("json");
    assert_eq!(rows, json!([{"host": "a", "usage": 50.5}]), "the admin token of the backup works on the copy");
}
