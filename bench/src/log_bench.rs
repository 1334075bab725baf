//! `tocsin-log-bench`: log ingest and search over a generated day of logs,
//! against a real `tocsin serve` that this program starts.
//!
//! Writes `--lines` events (see `tocsin_bench::logs`) over gRPC `WriteLogs`,
//! persists them into segments, then times the searches over HTTP
//! SQL: a rare token over the whole range (token search and `LIKE`), a count
//! by level per minute over the day, one trace, and a token search narrowed
//! by service and hour. Every answer is checked against what the generator
//! planted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tocsin_bench::data::START_NS;
use tocsin_bench::logs::{LogShape, RARE_TOKEN};
use tocsin_bench::util::{Server, metric, percentile, rfc3339, sql};
use tocsin_proto::v1::WriteLogsRequest;
use tocsin_proto::v1::ingest_client::IngestClient;

const DAY_NS: i64 = 86_400_000_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;

#[derive(Debug, Parser)]
#[command(about = "Log ingest and search benchmark over a generated day of logs")]
struct Args {
    /// The tocsin binary to start.
    #[arg(long, default_value = "target/release/tocsin")]
    tocsin: PathBuf,
    #[arg(long, default_value_t = 10_000_000)]
    lines: u64,
    /// Events carrying the rare token, spread over the day.
    #[arg(long, default_value_t = 20)]
    rare: u64,
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Events per WriteLogs request.
    #[arg(long, default_value_t = 5_000)]
    batch: u64,
    /// Runs per query.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Extra `[storage]` settings for the server, as TOML lines.
    #[arg(long, default_value = "")]
    storage: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Then run the same searches in DuckDB and ClickHouse (chdb) on the
    /// same data, answers compared (`bench/logs_peers.py`; needs `pip
    /// install duckdb chdb`).
    #[arg(long)]
    peers: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = format!(
        "[storage]\npersist_max_mb = 4096\npersist_max_age = \"1d\"\nmax_buffer_mb = 16384\n{}\n\
         [limits]\nmax_request_bytes = 268435456\n",
        args.storage.replace(';', "\n")
    );
    let server = Server::start(&args.tocsin, &config, &[])?;
    let shape = LogShape { lines: args.lines, start_ns: START_NS, span_ns: DAY_NS, rare: args.rare, seed: args.seed };
    println!(
        "dataset: {} log events over one day, 8 services, {} carrying {RARE_TOKEN}; server config:\n{}",
        args.lines,
        args.rare,
        config.trim()
    );
    ingest(&args, &shape, &server).await?;

    let t = Instant::now();
    let resp = reqwest::Client::new().post(format!("http://{}/api/v1/admin/persist", server.http)).send().await?;
    let stats: serde_json::Value = resp.json().await?;
    println!("persist: {stats} in {:.2} s", t.elapsed().as_secs_f64());
    let seg = metric(server.http, "tocsin_segment_bytes").await.unwrap_or(0.0);
    println!("on disk: segments {:.1} MiB ({:.1} bytes/event)", seg / 1048576.0, seg / args.lines as f64);
    queries(&args, &shape, &server).await?;
    if args.peers {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("logs_peers.py");
        let status = std::process::Command::new("python3")
            .arg(&script)
            .args(["--http", &server.http.to_string(), "--rare", RARE_TOKEN, "--runs", &args.runs.to_string()])
            .arg("--data-dir")
            .arg(server.dir.path().join("data"))
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} failed: {status}", script.display());
        }
    }
    Ok(())
}

async fn ingest(args: &Args, shape: &LogShape, server: &Server) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let (next, done, shape, batch, lines) = (Arc::clone(&next), Arc::clone(&done), *shape, args.batch, args.lines);
        let addr = format!("http://{}", server.grpc);
        tasks.push(tokio::spawn(async move {
            let mut client = IngestClient::connect(addr).await?.max_encoding_message_size(256 << 20);
            loop {
                let from = next.fetch_add(batch, Ordering::Relaxed);
                if from >= lines {
                    return Ok::<_, anyhow::Error>(());
                }
                let to = (from + batch).min(lines);
                let events = shape.events(from, to);
                let req = WriteLogsRequest { database: String::new(), stream: String::new(), events };
                let resp = client.write_logs(req).await?.into_inner();
                if resp.accepted_rows != to - from || !resp.rejected.is_empty() {
                    bail!("events {from}..{to}: {} accepted: {:?}", resp.accepted_rows, resp.rejected.first());
                }
                done.fetch_add(to - from, Ordering::Relaxed);
            }
        }));
    }
    let progress = {
        let (done, lines) = (Arc::clone(&done), args.lines);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let d = done.load(Ordering::Relaxed);
                eprintln!(
                    "  ingest {:5.1}%  {d} events  {:.0} events/s",
                    d as f64 * 100.0 / lines as f64,
                    d as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    for t in tasks {
        t.await.context("writer task")??;
    }
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingest: {:.0} events/s ({} events in {secs:.1} s, {} writers, {} events/request; generation included)",
        args.lines as f64 / secs,
        args.lines,
        args.writers,
        args.batch
    );
    Ok(())
}

struct Query {
    name: &'static str,
    sql: String,
    /// Checks the answer; says what is wrong.
    check: Check,
}

/// Checks a query's answer (rows as JSON objects); says what is wrong.
type Check = Box<dyn Fn(&[serde_json::Value]) -> Result<(), String>>;

fn rows(n: usize) -> Check {
    Box::new(move |r| if r.len() == n { Ok(()) } else { Err(format!("{} rows, expected {n}", r.len())) })
}

async fn queries(args: &Args, shape: &LogShape, server: &Server) -> anyhow::Result<()> {
    let day = (rfc3339(START_NS), rfc3339(START_NS + DAY_NS));
    // One flow from the first chunk, and how many events it has.
    let first = shape.events(0, args.batch.min(args.lines));
    let trace = first.iter().find(|e| !e.trace_id.is_empty()).map(|e| e.trace_id.clone()).context("no flow")?;
    let hops = first.iter().filter(|e| e.trace_id == trace).count();
    // The hour in the middle of the day: billing's declined cards.
    let hour = (rfc3339(START_NS + 12 * HOUR_NS), rfc3339(START_NS + 13 * HOUR_NS));
    let declined = sql(
        server.http,
        &format!(
            "SELECT count(*) AS n FROM logs WHERE service = 'billing' AND ts >= '{}' AND ts < '{}' \
             AND message LIKE 'card declined%'",
            hour.0, hour.1
        ),
    )
    .await?;
    let declined = declined.first().and_then(|r| r["n"].as_u64()).context("count")? as usize;
    let queries = [
        Query {
            name: "rare token, matches()",
            sql: format!(
                "SELECT ts, service, host, message FROM logs WHERE matches(message, '{RARE_TOKEN}') ORDER BY ts"
            ),
            check: rows(args.rare as usize),
        },
        Query {
            name: "rare token, LIKE",
            sql: format!("SELECT ts, service, host, message FROM logs WHERE message LIKE '%{RARE_TOKEN}%' ORDER BY ts"),
            check: rows(args.rare as usize),
        },
        Query {
            name: "count by level per minute, 1 day",
            sql: format!(
                "SELECT date_bin(INTERVAL '1 minute', ts) AS minute, level, count(*) AS n FROM logs \
                 WHERE ts >= '{}' AND ts < '{}' GROUP BY minute, level ORDER BY minute, level",
                day.0, day.1
            ),
            check: {
                let lines = args.lines;
                Box::new(move |r| {
                    let total: u64 = r.iter().filter_map(|x| x["n"].as_u64()).sum();
                    let mut minutes: Vec<&str> = r.iter().filter_map(|x| x["minute"].as_str()).collect();
                    minutes.dedup();
                    match (total == lines, minutes.len() == 1440.min(lines as usize)) {
                        (true, true) => Ok(()),
                        _ => Err(format!("{total} events in {} minutes, expected {lines} in 1440", minutes.len())),
                    }
                })
            },
        },
        Query {
            name: "level = error AND two terms, 1 day",
            sql: "SELECT count(*) AS n FROM logs WHERE level = 'error' \
                  AND matches(message, 'declined AND insufficient')"
                .to_string(),
            check: Box::new(|r| match r.first().and_then(|x| x["n"].as_u64()) {
                Some(n) if n > 0 => Ok(()),
                _ => Err(format!("expected a positive count: {r:?}")),
            }),
        },
        Query {
            name: "one trace",
            sql: format!("SELECT ts, service, level, message FROM logs WHERE trace_id = '{trace}' ORDER BY ts"),
            check: rows(hops),
        },
        Query {
            name: "service + token, 1 hour",
            sql: format!(
                "SELECT ts, host, message FROM logs WHERE service = 'billing' AND ts >= '{}' AND ts < '{}' \
                 AND matches(message, 'declined AND insufficient')",
                hour.0, hour.1
            ),
            check: rows(declined),
        },
    ];
    println!("queries: {} runs each over HTTP /api/v1/sql (JSON), wall-clock per request", args.runs);
    println!("{:<34} {:>10} {:>10} {:>10} {:>8}", "query", "median ms", "p99 ms", "min ms", "rows");
    for q in &queries {
        let mut times = Vec::with_capacity(args.runs);
        // One warm-up run, not counted; it also checks the answer.
        let answer = sql(server.http, &q.sql).await?;
        (q.check)(&answer).map_err(|e| anyhow::anyhow!("{}: {e}: {}", q.name, q.sql))?;
        let n = answer.len();
        for _ in 0..args.runs {
            let t = Instant::now();
            let answer = sql(server.http, &q.sql).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if answer.len() != n {
                bail!("{}: {} rows, then {}", q.name, n, answer.len());
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>10.1} {:>8}",
            q.name,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[0],
            n
        );
    }
    Ok(())
}
