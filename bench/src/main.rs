//! `tocsin-bench`: TSBS `cpu-only` ingest and query benchmark against a
//! running Tocsin server. See docs/benchmarks.md for how it is run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tocsin_proto::v1::ingest_client::IngestClient;

use tocsin_bench::data::{self, INTERVAL_NS, Rng, START_NS};
use tocsin_bench::tsbs;
use tocsin_bench::util::{metric, percentile};

#[derive(Debug, Parser)]
#[command(about = "TSBS-like benchmark for a running tocsin server")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:4317")]
    grpc_addr: String,
    #[arg(long, default_value = "127.0.0.1:4318")]
    http_addr: String,
    /// Number of hosts.
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Hours of data at 10 s per sample.
    #[arg(long, default_value_t = 24)]
    hours: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep full-precision floats instead of TSBS' integers.
    #[arg(long)]
    float: bool,
    /// Concurrent gRPC writers.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Samples per host per request (rows per request = hosts x this).
    #[arg(long, default_value_t = 100)]
    batch_steps: usize,
    /// Runs per query type.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Only run the queries (data already loaded).
    #[arg(long)]
    skip_ingest: bool,
    /// Only ingest.
    #[arg(long)]
    skip_queries: bool,
    /// Query types to run, comma-separated (TSBS names; all 15 by default).
    #[arg(long, default_value = "all")]
    queries: String,
    /// Write each timed statement, as JSON lines `{"query", "sql"}`, to this
    /// file (what `bench/tsbs_peers.py` runs in the peers).
    #[arg(long)]
    statements_out: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let steps = args.hours * 360;
    let values = (args.hosts * steps * data::FIELDS.len()) as u64;
    println!(
        "dataset: cpu-only, {} hosts x {} h at 10 s = {} rows, {} values ({})",
        args.hosts,
        args.hours,
        args.hosts * steps,
        values,
        if args.float { "float" } else { "integer" }
    );
    if !args.skip_ingest {
        ingest(&args, steps, values).await?;
    }
    if !args.skip_queries {
        queries(&args, steps).await?;
    }
    Ok(())
}

async fn ingest(args: &Args, steps: usize, values: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    let generated = data::generate(args.hosts, steps, args.seed);
    let requests = Arc::new(data::requests(&generated, steps, args.batch_steps, args.float));
    drop(generated);
    eprintln!("generated {} requests in {:.1} s", requests.len(), t.elapsed().as_secs_f64());
    let http: std::net::SocketAddr = args.http_addr.parse().context("--http-addr")?;
    let wal_before = metric(http, "tocsin_wal_bytes_total").await.unwrap_or(0.0);

    let next = Arc::new(AtomicUsize::new(0));
    let rows_done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let requests = Arc::clone(&requests);
        let next = Arc::clone(&next);
        let rows_done = Arc::clone(&rows_done);
        let addr = format!("http://{}", args.grpc_addr);
        tasks.push(tokio::spawn(async move {
            let mut client = IngestClient::connect(addr).await?.max_encoding_message_size(256 << 20);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = requests.get(i) else { return Ok::<_, anyhow::Error>(()) };
                let rows: usize = req.series.iter().map(|s| s.timestamps.len()).sum();
                let resp = client.write_rows(req.clone()).await?.into_inner();
                if resp.accepted_rows as usize != rows || !resp.rejected.is_empty() {
                    bail!("request {i}: {} of {rows} rows accepted: {:?}", resp.accepted_rows, resp.rejected.first());
                }
                rows_done.fetch_add(rows as u64, Ordering::Relaxed);
            }
        }));
    }
    let total_rows = (args.hosts * steps) as u64;
    let progress = {
        let rows_done = Arc::clone(&rows_done);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = rows_done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  ingest {:5.1}%  {} rows  {:.0} values/s",
                    done as f64 * 100.0 / total_rows as f64,
                    done,
                    done as f64 * 10.0 / secs
                );
            }
        })
    };
    for t in tasks {
        t.await.context("writer task")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    let wal_bytes = metric(http, "tocsin_wal_bytes_total").await.unwrap_or(0.0) - wal_before;
    println!(
        "ingest: {:.0} rows/s, {:.0} values/s ({} values in {:.2} s, {} writers, {} rows/request)",
        total_rows as f64 / elapsed,
        values as f64 / elapsed,
        values,
        elapsed,
        args.concurrency,
        args.hosts * args.batch_steps
    );
    println!("wal: {:.3} bytes/value appended during ingest", wal_bytes / values as f64);

    let t = Instant::now();
    let resp = reqwest::Client::new().post(format!("http://{}/api/v1/admin/persist", args.http_addr)).send().await?;
    let stats: serde_json::Value = resp.json().await?;
    println!("persist: {stats} in {:.2} s", t.elapsed().as_secs_f64());
    let seg = metric(http, "tocsin_segment_bytes").await.unwrap_or(0.0);
    println!("on disk: {:.3} bytes/value in segments ({:.1} MiB)", seg / values as f64, seg / 1048576.0);
    // Settle: merge what successive persists left (nothing after a single
    // persist per partition), as the background compaction would.
    let t = Instant::now();
    let resp = reqwest::Client::new().post(format!("http://{}/api/v1/admin/compact", args.http_addr)).send().await?;
    let stats: serde_json::Value = resp.json().await?;
    let background =
        metric(http, "tocsin_storage_compactions_total").await.unwrap_or(0.0) - stats["merges"].as_f64().unwrap_or(0.0);
    if background > 0.0 {
        println!("compaction: {background} merges ran in the background during the run");
    }
    if stats["merges"].as_u64().unwrap_or(0) > 0 {
        println!("compaction: {stats} in {:.2} s", t.elapsed().as_secs_f64());
        let seg = metric(http, "tocsin_segment_bytes").await.unwrap_or(0.0);
        println!("on disk after compaction: {:.3} bytes/value ({:.1} MiB)", seg / values as f64, seg / 1048576.0);
    }
    Ok(())
}

async fn queries(args: &Args, steps: usize) -> anyhow::Result<()> {
    let dataset = tsbs::Dataset { hosts: args.hosts, end: START_NS + steps as i64 * INTERVAL_NS };
    let types = tsbs::select(&args.queries).map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/sql", args.http_addr);
    let mut rng = Rng::new(args.seed.wrapping_add(42));
    let mut statements = match &args.statements_out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    println!("queries: {} runs each over HTTP /api/v1/sql (JSON), wall-clock per request", args.runs);
    println!("{:<24} {:>10} {:>10} {:>10} {:>8}", "query", "median ms", "p99 ms", "min ms", "rows");
    for q in &types {
        let mut times = Vec::with_capacity(args.runs);
        let mut rows = 0;
        // One warm-up run (page cache, plan caches), not counted.
        let warm = q.make(&mut rng, dataset);
        http.post(&url).json(&serde_json::json!({ "sql": warm })).send().await?.bytes().await?;
        for _ in 0..args.runs {
            let sql = q.make(&mut rng, dataset);
            if let Some(out) = statements.as_mut() {
                use std::io::Write as _;
                writeln!(out, "{}", serde_json::json!({ "query": q.name, "sql": sql }))?;
            }
            let t = Instant::now();
            let resp = http.post(&url).json(&serde_json::json!({ "sql": sql })).send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if !status.is_success() {
                bail!("{}: {sql}: {}", q.name, String::from_utf8_lossy(&body));
            }
            rows = serde_json::from_slice::<Vec<serde_json::Value>>(&body).map(|v| v.len()).unwrap_or(0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{:<24} {:>10.1} {:>10.1} {:>10.1} {:>8}",
            q.name,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[0],
            rows
        );
    }
    Ok(())
}
