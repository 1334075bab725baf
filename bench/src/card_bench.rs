//! `tocsin-card-bench`: ingest rate, memory and a per-series lastpoint at
//! 10 k, 100 k, 1 M (and more) active series, Tocsin and VictoriaMetrics in
//! one run on the same requests.
//!
//! Each cardinality is a scrape-like workload over Prometheus remote_write:
//! every series gets one sample per round (15 s apart, ending now), sent
//! the way Prometheus sends a scrape's samples, `--batch` series of one
//! sample each per request, so the cost of a series (its labels, its
//! lookup) is paid once per sample. Each target starts on a fresh
//! temporary directory; its resident memory is read from `/proc` when
//! idle, right after the ingest, and after its buffers are flushed to disk
//! (Tocsin: persist; VictoriaMetrics: `force_flush`), when what is left is
//! what it keeps per series. Then both answer "the newest sample of every
//! series" (Tocsin: `DISTINCT ON` over the series' tags, which reads the
//! last-row cache; VictoriaMetrics: an instant query of the metric), timed
//! until the whole answer is received, and the answers are checked.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use prost::Message;
use tocsin_bench::peers::{Peer, memory, push};
use tocsin_bench::util::{Server, metric, percentile};
use tocsin_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

#[derive(Debug, Parser)]
#[command(about = "active series: ingest rate, memory per series and lastpoint, Tocsin vs VictoriaMetrics")]
struct Args {
    #[arg(long, default_value = "target/release/tocsin")]
    tocsin: PathBuf,
    /// Active series counts to run, comma-separated.
    #[arg(long, default_value = "10000,100000,1000000", value_delimiter = ',')]
    series: Vec<usize>,
    /// Samples per series (scrape rounds, 15 s apart).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Series per remote_write request (Prometheus' `max_samples_per_send`
    /// is 2,000).
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Concurrent HTTP connections per target.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Timed lastpoint queries per target (after one warm-up).
    #[arg(long, default_value_t = 5)]
    lastpoint_runs: usize,
    /// After Tocsin's persist, keep its server up this many seconds and
    /// print its address (to profile it or query it by hand).
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Skip these targets (comma-separated: tocsin, vm).
    #[arg(long, default_value = "")]
    skip: String,
}

const METRIC: &str = "card_requests";
const STEP_MS: i64 = 15_000;

/// The labels of series `i`: 100 handlers per instance, so that
/// (instance, handler) names a series; region and env follow the instance.
fn labels(i: usize) -> Vec<Label> {
    let host = i / 100;
    let l = |name: &str, value: String| Label { name: name.into(), value };
    vec![
        l("__name__", METRIC.into()),
        l("env", if host.is_multiple_of(10) { "staging".into() } else { "prod".into() }),
        l("handler", format!("/api/v1/handler{:02}", i % 100)),
        l("instance", format!("host-{host:06}.dc1.example.net:9100")),
        l("job", "card".into()),
        l("region", format!("region-{}", host % 8)),
    ]
}

/// Series `i`'s value in round `r`: one decimal, changing every round.
fn value(i: usize, r: usize) -> f64 {
    ((i * 31 + r * 17) % 10_000) as f64 / 10.0
}

/// Snappy remote_write bodies, round by round, `batch` series per body.
fn bodies(series: usize, rounds: usize, batch: usize, t0_ms: i64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for r in 0..rounds {
        for start in (0..series).step_by(batch) {
            let timeseries = (start..(start + batch).min(series))
                .map(|i| TimeSeries {
                    labels: labels(i),
                    samples: vec![Sample { value: value(i, r), timestamp: t0_ms + r as i64 * STEP_MS }],
                })
                .collect();
            let raw = WriteRequest { timeseries, metadata: vec![] }.encode_to_vec();
            out.push(snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default());
        }
    }
    out
}

/// What one target did at one cardinality.
struct Outcome {
    target: &'static str,
    series: usize,
    samples_per_s: f64,
    rss_idle: u64,
    rss_ingested: u64,
    rss_flushed: u64,
    peak: u64,
    lastpoint_ms: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let skip: Vec<&str> = args.skip.split(',').collect();
    let mut outcomes = Vec::new();
    for &n in &args.series {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        let t0 = now_ms / STEP_MS * STEP_MS - args.rounds as i64 * STEP_MS;
        let last_ts = t0 + (args.rounds as i64 - 1) * STEP_MS;
        let t = Instant::now();
        let bodies = bodies(n, args.rounds, args.batch, t0);
        eprintln!(
            "{n} series x {} rounds: {} bodies, {:.1} MiB, generated in {:.1} s",
            args.rounds,
            bodies.len(),
            bodies.iter().map(Vec::len).sum::<usize>() as f64 / 1048576.0,
            t.elapsed().as_secs_f64()
        );
        let samples = (n * args.rounds) as u64;
        // The answer every target must give: n series, each at its last
        // round's value.
        let expected_sum: f64 = (0..n).map(|i| value(i, args.rounds - 1)).sum();
        if !skip.contains(&"tocsin") {
            outcomes.push(tocsin(&args, n, &bodies, samples, expected_sum).await?);
        }
        if !skip.contains(&"vm") {
            outcomes.push(victoria_metrics(&args, n, &bodies, samples, expected_sum, last_ts).await?);
        }
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "{:<16} {:>9} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10} {:>12}",
        "target",
        "series",
        "samples/s",
        "idle MiB",
        "ingested MiB",
        "peak MiB",
        "flushed MiB",
        "B/series",
        "lastpoint ms"
    );
    for o in &outcomes {
        println!(
            "{:<16} {:>9} {:>12.0} {:>10.1} {:>12.1} {:>10.1} {:>12.1} {:>10.0} {:>12.1}",
            o.target,
            o.series,
            o.samples_per_s,
            mib(o.rss_idle),
            mib(o.rss_ingested),
            mib(o.peak),
            mib(o.rss_flushed),
            o.rss_flushed.saturating_sub(o.rss_idle) as f64 / o.series as f64,
            o.lastpoint_ms
        );
    }
    println!(
        "B/series = (resident after flush - resident idle) / series; lastpoint = median of {} (whole answer received)",
        args.lastpoint_runs
    );
    Ok(())
}

/// Resident memory once it has settled: allocators return freed pages
/// after a delay (jemalloc's decay is 10 s), so this waits for two equal
/// readings a second apart, at most 15 s.
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut last = memory(pid)?.0;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = memory(pid)?.0;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

async fn timed_runs<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    f().await?; // warm-up
    let mut ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        f().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(percentile(&ms, 0.5))
}

fn check(target: &str, rows: usize, sum: f64, n: usize, expected_sum: f64) -> anyhow::Result<()> {
    if rows != n || (sum - expected_sum).abs() > 1e-6 * expected_sum.abs().max(1.0) {
        bail!("{target}: lastpoint gave {rows} series summing to {sum}, expected {n} summing to {expected_sum}");
    }
    Ok(())
}

async fn tocsin(args: &Args, n: usize, bodies: &[Vec<u8>], samples: u64, expected_sum: f64) -> anyhow::Result<Outcome> {
    // The per-table series limit (1 M by default) is raised for the larger runs.
    let config = format!("[limits]\nmax_series_per_table = {}\n", (2 * n).max(1_000_000));
    let server = Server::start(&args.tocsin, &config, &[])?;
    let pid = server.pid();
    let rss_idle = settled_rss(pid).await?;
    let url = format!("http://{}/api/v1/write", server.http);
    let samples_per_s = push(&url, bodies, samples, args.concurrency, &[("content-encoding", "snappy")]).await?;
    let rss_ingested = memory(pid)?.0;
    let active = metric(server.http, "tocsin_storage_active_series").await?;
    if active as usize != n {
        bail!("Tocsin counts {active} active series, {n} were written");
    }
    let client = reqwest::Client::new();
    let resp = client.post(format!("http://{}/api/v1/admin/persist", server.http)).send().await?;
    if !resp.status().is_success() {
        bail!("persist: {}", resp.text().await?);
    }
    let rss_flushed = settled_rss(pid).await?;
    if args.hold_secs > 0 {
        eprintln!("  Tocsin holds {n} series at http://{} (pid {pid}) for {} s", server.http, args.hold_secs);
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    }
    let sql = format!(
        "SELECT DISTINCT ON (instance, handler) instance, handler, ts, value FROM {METRIC} ORDER BY instance, handler, ts DESC"
    );
    let query = || {
        let (client, url, sql) = (client.clone(), format!("http://{}/api/v1/sql", server.http), sql.clone());
        async move {
            let resp = client.post(url).json(&serde_json::json!({ "sql": sql, "format": "csv" })).send().await?;
            if !resp.status().is_success() {
                bail!("lastpoint: {}", resp.text().await?);
            }
            Ok::<_, anyhow::Error>(resp.bytes().await?)
        }
    };
    let body = query().await?;
    let text = std::str::from_utf8(&body).context("CSV answer")?;
    let mut rows = 0;
    let mut sum = 0.0;
    for line in text.lines().skip(1) {
        let v: f64 = line.rsplit(',').next().context("CSV row")?.parse().context("value")?;
        rows += 1;
        sum += v;
    }
    check("Tocsin", rows, sum, n, expected_sum)?;
    let lastpoint_ms = timed_runs(args.lastpoint_runs, || async { query().await.map(drop) }).await?;
    let peak = memory(pid)?.1;
    eprintln!("  Tocsin {n}: lastpoint {lastpoint_ms:.1} ms");
    Ok(Outcome { target: "Tocsin", series: n, samples_per_s, rss_idle, rss_ingested, rss_flushed, peak, lastpoint_ms })
}

async fn victoria_metrics(
    args: &Args,
    n: usize,
    bodies: &[Vec<u8>],
    samples: u64,
    expected_sum: f64,
    last_ts: i64,
) -> anyhow::Result<Outcome> {
    let limit = format!("-search.maxUniqueTimeseries={}", 2 * n);
    let series_limit = format!("-search.maxSeries={}", 2 * n);
    let vm = Peer::victoria_metrics(&[&limit, &series_limit]).await?;
    let pid = vm.pid();
    let rss_idle = settled_rss(pid).await?;
    let samples_per_s = push(
        &format!("{}/api/v1/write", vm.base),
        bodies,
        samples,
        args.concurrency,
        &[("content-encoding", "snappy")],
    )
    .await?;
    let rss_ingested = memory(pid)?.0;
    reqwest::get(format!("{}/internal/force_flush", vm.base)).await?;
    let rss_flushed = settled_rss(pid).await?;
    let client = reqwest::Client::new();
    let at = format!("{:.3}", last_ts as f64 / 1000.0);
    let query = || {
        let (client, url, at) = (client.clone(), format!("{}/api/v1/query", vm.base), at.clone());
        async move {
            let resp = client.get(url).query(&[("query", METRIC), ("time", at.as_str())]).send().await?;
            if !resp.status().is_success() {
                bail!("instant query: {}", resp.text().await?);
            }
            Ok::<_, anyhow::Error>(resp.bytes().await?)
        }
    };
    let body = query().await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let result = v["data"]["result"].as_array().context("VictoriaMetrics result")?;
    let mut sum = 0.0;
    for r in result {
        sum += r["value"][1].as_str().context("value")?.parse::<f64>()?;
    }
    check("VictoriaMetrics", result.len(), sum, n, expected_sum)?;
    let lastpoint_ms = timed_runs(args.lastpoint_runs, || async { query().await.map(drop) }).await?;
    let peak = memory(pid)?.1;
    eprintln!("  VictoriaMetrics {n}: lastpoint {lastpoint_ms:.1} ms");
    Ok(Outcome {
        target: "VictoriaMetrics",
        series: n,
        samples_per_s,
        rss_idle,
        rss_ingested,
        rss_flushed,
        peak,
        lastpoint_ms,
    })
}
