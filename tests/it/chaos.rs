//! The crash harness: the real binary under concurrent writes of every kind
//! (gRPC rows, gRPC logs, line protocol, remote_write, SQL INSERT) while
//! persists, compactions, retention and a roll-up run, killed with `kill -9`
//! at random moments, round after round on the same data directory (a long
//! run starts a fresh one every `TOCSIN_CRASH_ROUNDS_PER_DIR` rounds).
//!
//! After every restart: every acknowledged row is present exactly once;
//! a request that was not acknowledged is either wholly present or wholly
//! absent (one request is one WAL record); the server starts (or the test
//! fails with its log). `TOCSIN_CRASH_ROUNDS` sets the number of rounds
//! (default 12 in CI; docs/storage.md records a long run), and
//! `TOCSIN_CRASH_SEED` the seed of the kill times (printed).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use prost::Message;
use tocsin_proto::v1::WriteLogsRequest;

use crate::server::TestServer;
use crate::util::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Rows,
    Logs,
    Line,
    Prom,
    Sql,
}

const KINDS: [Kind; 5] = [Kind::Rows, Kind::Logs, Kind::Line, Kind::Prom, Kind::Sql];

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Rows => "h_rows",
            Kind::Logs => "logs",
            Kind::Line => "h_line",
            Kind::Prom => "h_prom",
            Kind::Sql => "h_sql",
        }
    }

    /// The SQL expression that yields a row's id.
    fn id_expr(self) -> &'static str {
        match self {
            Kind::Logs => "CAST(substr(message, 4) AS BIGINT)",
            Kind::Prom => "CAST(value AS BIGINT)",
            _ => "id",
        }
    }

    fn batch(self) -> i64 {
        match self {
            Kind::Sql => 20,
            _ => 100,
        }
    }
}

/// One request: ids `start..start + len`, and whether it was acknowledged.
#[derive(Debug, Clone, Copy)]
struct Sent {
    start: i64,
    len: i64,
    acked: bool,
}

#[derive(Default)]
struct Ledger {
    sent: HashMap<Kind, Vec<Sent>>,
    /// Rows known present after the last check.
    present: HashMap<Kind, i64>,
}

/// Sends one request of `kind` with ids `start..start + len`; Ok(true) when
/// acknowledged in full.
async fn send(server: &Servers, kind: Kind, start: i64, len: i64, base_ns: i64) -> bool {
    let ids: Vec<i64> = (start..start + len).collect();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
    match kind {
        Kind::Rows => {
            let Ok(mut c) =
                tocsin_proto::v1::ingest_client::IngestClient::connect(format!("http://{}", server.grpc)).await
            else {
                return false;
            };
            let req = rows(
                "h_rows",
                vec![row_series(
                    &[("w", "rows")],
                    ids.iter().map(|i| base_ns + i).collect(),
                    vec![i64s("id", ids.clone())],
                )],
            );
            matches!(c.write_rows(req).await, Ok(r) if r.get_ref().accepted_rows == len as u64)
        }
        Kind::Logs => {
            let Ok(mut c) =
                tocsin_proto::v1::ingest_client::IngestClient::connect(format!("http://{}", server.grpc)).await
            else {
                return false;
            };
            let events = ids.iter().map(|i| log(base_ns + i, "chaos", "info", &format!("id-{i}"), "")).collect();
            let req = WriteLogsRequest { database: String::new(), stream: String::new(), events };
            matches!(c.write_logs(req).await, Ok(r) if r.get_ref().accepted_rows == len as u64)
        }
        Kind::Line => {
            let body: String = ids.iter().map(|i| format!("h_line,w=line id={i}i {}\n", base_ns + i)).collect();
            let resp = http.post(format!("http://{}/write?db=public", server.http)).body(body).send().await;
            matches!(resp, Ok(r) if r.status().as_u16() == 204)
        }
        Kind::Prom => {
            use tocsin_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};
            let base_ms = base_ns / 1_000_000;
            let series = TimeSeries {
                labels: vec![
                    Label { name: "__name__".into(), value: "h_prom".into() },
                    Label { name: "w".into(), value: "prom".into() },
                ],
                samples: ids.iter().map(|i| Sample { value: *i as f64, timestamp: base_ms + i }).collect(),
            };
            let req = WriteRequest { timeseries: vec![series], metadata: vec![] };
            let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).expect("snappy");
            let resp = http
                .post(format!("http://{}/api/v1/write", server.http))
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", "snappy")
                .body(body)
                .send()
                .await;
            matches!(resp, Ok(r) if r.status().as_u16() == 204)
        }
        Kind::Sql => {
            let values: Vec<String> =
                ids.iter().map(|i| format!("(to_timestamp_nanos({}), 'sql', {i})", base_ns + i)).collect();
            let sql = format!("INSERT INTO h_sql (ts, w, id) VALUES {}", values.join(", "));
            let resp = http
                .post(format!("http://{}/api/v1/sql", server.http))
                .json(&serde_json::json!({ "sql": sql }))
                .send()
                .await;
            matches!(resp, Ok(r) if r.status().as_u16() == 200)
        }
    }
}

#[derive(Clone, Copy)]
struct Servers {
    grpc: std::net::SocketAddr,
    http: std::net::SocketAddr,
}

/// Writes batches of `kind` until the server stops answering.
async fn writer(server: Servers, kind: Kind, next: Arc<AtomicI64>, stop: Arc<AtomicBool>, base_ns: i64) -> Vec<Sent> {
    let mut sent = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let len = kind.batch();
        let start = next.fetch_add(len, Ordering::Relaxed);
        let acked = send(&server, kind, start, len, base_ns).await;
        sent.push(Sent { start, len, acked });
        if !acked {
            break;
        }
    }
    sent
}

/// Rows written to an old partition, for retention to drop.
async fn old_writer(server: Servers, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let mut i = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let body: String = (0..50).map(|k| format!("h_old,w=old v={k}i {}\n", T0 + (i * 50 + k) * SEC)).collect();
        if http.post(format!("http://{}/write?db=public", server.http)).body(body).send().await.is_err() {
            return;
        }
        i += 1;
    }
}

async fn ids_since(server: &TestServer, kind: Kind, from: i64) -> Vec<i64> {
    let sql = format!("SELECT {} AS id FROM {} WHERE {} >= {from}", kind.id_expr(), kind.table(), kind.id_expr());
    let exists = server
        .sql(&format!(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public' AND table_name = '{}'",
            kind.table()
        ))
        .await;
    if exists[0]["n"].as_i64() != Some(1) {
        return Vec::new(); // nothing of this kind was written yet
    }
    // Any error now is a failure: a query that fails because compaction
    // deleted a file under it once passed here as "no such table".
    let (status, body) = server.sql_raw(&sql).await;
    assert_eq!(status, 200, "{sql}: {body}");
    body.as_array().cloned().unwrap_or_default().iter().filter_map(|r| r["id"].as_i64()).collect()
}

/// Checks what the previous round sent, and that nothing else changed.
async fn check(server: &TestServer, ledger: &mut Ledger, round: usize) {
    for kind in KINDS {
        let sent = ledger.sent.remove(&kind).unwrap_or_default();
        let from = sent.iter().map(|s| s.start).min().unwrap_or(i64::MAX);
        let mut found: HashMap<i64, u32> = HashMap::new();
        if from != i64::MAX {
            for id in ids_since(server, kind, from).await {
                *found.entry(id).or_default() += 1;
            }
        }
        if let Some((id, n)) = found.iter().find(|(_, n)| **n > 1) {
            panic!("round {round}: {kind:?} id {id} is present {n} times");
        }
        let mut present = 0;
        for s in &sent {
            let here = (s.start..s.start + s.len).filter(|i| found.contains_key(i)).count() as i64;
            if s.acked {
                assert_eq!(here, s.len, "round {round}: {kind:?} acknowledged ids {}.. lost {}", s.start, s.len - here);
            } else {
                assert!(
                    here == 0 || here == s.len,
                    "round {round}: {kind:?} unacknowledged request {}.. is half present ({here} of {})",
                    s.start,
                    s.len
                );
            }
            present += here;
        }
        let total = ledger.present.entry(kind).or_default();
        *total += present;
        let (status, body) = server
            .sql_raw(&format!("SELECT count(*) AS n, count(DISTINCT {}) AS d FROM {}", kind.id_expr(), kind.table()))
            .await;
        if status == 200 {
            let (n, d) = (body[0]["n"].as_i64().unwrap_or(-1), body[0]["d"].as_i64().unwrap_or(-1));
            assert_eq!(
                (n, d),
                (*total, *total),
                "round {round}: {kind:?} has {n} rows ({d} distinct), expected {total}"
            );
        }
    }
}

/// Keeps the data directory (and the servers' logs beside it) when the test
/// fails, and says where.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("crash harness: data and logs kept in {}", dir.keep().display());
        }
    }
}

/// A small deterministic generator for the kill times.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_random_under_every_kind_of_write_and_background_work() {
    let rounds: usize = std::env::var("TOCSIN_CRASH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    // A long run starts a fresh data directory every so many rounds: the
    // checks read every row, so one directory's rounds slow down as it grows.
    let per_dir: usize =
        std::env::var("TOCSIN_CRASH_ROUNDS_PER_DIR").ok().and_then(|v| v.parse().ok()).unwrap_or(rounds).max(1);
    let mut seed: u64 = std::env::var("TOCSIN_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    }) | 1;
    eprintln!("crash harness: {rounds} rounds, {per_dir} per data directory, TOCSIN_CRASH_SEED={seed}");
    let (mut done, mut kills_with_work, mut total) = (0, 0, 0);
    while done < rounds {
        let these = per_dir.min(rounds - done);
        let (work, rows) = campaign(done, these, &mut seed).await;
        done += these;
        kills_with_work += work;
        total += rows;
    }
    eprintln!("crash harness: {rounds} kills, {kills_with_work} after persists or merges ran; {total} rows checked");
    assert!(total > 0, "nothing was written");
    assert!(rounds < 4 || kills_with_work > 0, "no persist or merge ran before any kill");
}

/// `rounds` kill -9 rounds on one fresh data directory, numbered from
/// `first`; returns the kills after which work had run, and the rows checked.
async fn campaign(first: usize, rounds: usize, seed: &mut u64) -> (usize, i64) {
    let tmp = KeepOnPanic(Some(tempfile::tempdir().expect("tempdir")));
    let tmp = tmp.0.as_ref().expect("tempdir");
    let dir = tmp.path().join("data");
    let cfg = tmp.path().join("tocsin.toml");
    std::fs::write(
        &cfg,
        "[storage]\npersist_max_mb = 1\npersist_max_age = \"1s\"\n\
         [compaction]\nfan_in = 2\ninterval = \"100ms\"\ngrace = \"0s\"\n\
         [retention]\ntables = { \"public.h_old\" = \"1d\" }\n\
         [[rollup]]\nname = \"rows_1m\"\nsource = \"public.h_rows\"\ntarget = \"public.h_rows_1m\"\n\
         bucket = \"60s\"\ndelay = \"1s\"\nbackfill = \"1h\"\n",
    )
    .expect("config");
    let cfg = cfg.to_str().expect("utf8").to_string();
    let extra = ["--config", cfg.as_str()];
    let base_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as i64
        - 3_600 * SEC;
    let next: HashMap<Kind, Arc<AtomicI64>> = KINDS.iter().map(|k| (*k, Arc::new(AtomicI64::new(1)))).collect();
    let mut ledger = Ledger::default();
    let mut kills_with_work = 0;
    for round in first..first + rounds {
        let mut server = TestServer::start_in(&dir, &extra);
        check(&server, &mut ledger, round).await;
        let servers = Servers { grpc: server.grpc, http: server.http };
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = KINDS
            .iter()
            .map(|k| tokio::spawn(writer(servers, *k, Arc::clone(&next[k]), Arc::clone(&stop), base_ns)))
            .collect();
        let old = tokio::spawn(old_writer(servers, Arc::clone(&stop)));
        let wait = 50 + next_random(seed) % 2_000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for (k, w) in KINDS.iter().zip(writers) {
            ledger.sent.entry(*k).or_default().extend(w.await.expect("writer"));
        }
        let _ = old.await;
        let log = server.log_text();
        if log.contains("persisted write buffer") || log.contains("compacted segments") {
            kills_with_work += 1;
        }
        if round % 50 == 49 {
            eprintln!("crash harness: {} rounds done", round + 1);
        }
    }
    let server = TestServer::start_in(&dir, &extra);
    check(&server, &mut ledger, first + rounds).await;
    (kills_with_work, ledger.present.values().sum())
}
