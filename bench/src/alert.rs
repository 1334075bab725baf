//! `tocsin-alert-bench`: alerting benchmarks against a real `tocsin serve`
//! that this program starts.
//!
//! - `latency`: time from an acknowledged write that crosses a threshold to
//!   the webhook request arriving at a local receiver, for a polled rule
//!   (`--interval`, default 1s) and for an `on_ingest` rule.
//! - `capacity`: server CPU while N rules over M series evaluate on an
//!   interval.
//! - `latency --background 10000 --receivers 100`: the same latency while
//!   the engine holds that many firing alerts routed to that many receivers
//!   (posted through the Alertmanager API, so they add state, grouping and
//!   dispatch work but no rule evaluation).
//! - `throughput`: notifications per second one receiver's worker delivers
//!   to a local webhook (N alerts, each its own group, posted at once).
//! - `state`: with N alerts held, the journal record one change costs, and
//!   the snapshot (and the restart) after a `kill -9`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tocsin_alerting::testkit::WebhookSink;
use tocsin_bench::util::{Server, metric, percentile, sql};
use tocsin_proto::v1::ingest_client::IngestClient;
use tocsin_proto::v1::{DoubleValues, FieldColumn, Label, RowSeries, WriteRowsRequest, field_column};

#[derive(Debug, Parser)]
#[command(about = "Alerting benchmarks: write-to-webhook latency and evaluation capacity")]
struct Args {
    /// The tocsin binary to start.
    #[arg(long, default_value = "target/release/tocsin")]
    tocsin: PathBuf,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Write → webhook latency, polled and on the ingest path.
    Latency {
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Rule interval of the polled rule.
        #[arg(long, default_value = "1s")]
        interval: String,
        /// Firing alerts held meanwhile (posted through the Alertmanager API).
        #[arg(long, default_value_t = 0)]
        background: usize,
        /// Receivers the background alerts are routed to.
        #[arg(long, default_value_t = 1)]
        receivers: usize,
    },
    /// Notifications per second one receiver's worker delivers.
    Throughput {
        #[arg(long, default_value_t = 10_000)]
        alerts: usize,
    },
    /// Time to save the alerting state with this many alerts held.
    State {
        #[arg(long, default_value_t = 100_000)]
        alerts: usize,
        #[arg(long, default_value_t = 5)]
        saves: usize,
    },
    /// Server CPU while rules evaluate.
    Capacity {
        #[arg(long, default_value_t = 1000)]
        rules: usize,
        #[arg(long, default_value_t = 100_000)]
        series: usize,
        /// Tables the series are spread over (rules are spread the same way).
        #[arg(long, default_value_t = 100)]
        tables: usize,
        #[arg(long, default_value_t = 10)]
        interval_secs: u64,
        /// How long to measure.
        #[arg(long, default_value_t = 60)]
        measure_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.mode {
        Mode::Latency { runs, interval, background, receivers } => {
            latency(&args.tocsin, runs, &interval, background, receivers).await
        }
        Mode::Throughput { alerts } => throughput(&args.tocsin, alerts).await,
        Mode::State { alerts, saves } => state(&args.tocsin, alerts, saves).await,
        Mode::Capacity { rules, series, tables, interval_secs, measure_secs } => {
            capacity(&args.tocsin, rules, series, tables, interval_secs, measure_secs).await
        }
    }
}

/// Starts a server with `rules_yaml` as its rules file.
fn start_server(bin: &Path, rules_yaml: &str) -> anyhow::Result<(Server, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, rules_yaml)?;
    let server = Server::start(bin, "", &["--rules".as_ref(), rules.as_os_str()])?;
    Ok((server, dir))
}

/// Posts `alerts` through the Alertmanager API, in posts of 10,000.
async fn post_alerts(http: std::net::SocketAddr, alerts: &[serde_json::Value]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for chunk in alerts.chunks(10_000) {
        let resp = client.post(format!("http://{http}/api/v2/alerts")).json(&chunk).send().await?;
        if !resp.status().is_success() {
            bail!("posting alerts: {}", resp.text().await?);
        }
    }
    Ok(())
}

/// Waits until every notification decided so far is out.
async fn drained(http: std::net::SocketAddr, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if metric(http, "tocsin_notification_outbox").await? == 0.0 {
            return Ok(());
        }
    }
    bail!("the outbox did not drain within {within:?}")
}

async fn latency(bin: &Path, runs: usize, interval: &str, background: usize, receivers: usize) -> anyhow::Result<()> {
    for mode in ["polled", "on_ingest"] {
        let sink = WebhookSink::start(0).await?;
        let addr = sink.addr;
        let source = if mode == "polled" {
            "sql: SELECT host, max(usage) AS value FROM lat WHERE ts > now() - INTERVAL '30 seconds' GROUP BY host"
                .to_string()
        } else {
            "on_ingest: { table: lat, field: usage }".to_string()
        };
        let yaml = format!(
            r#"
groups:
  - name: latency
    interval: {interval}
    rules:
      - alert: Latency
        {source}
        thresholds: {{ critical: "> 90" }}
route:
  receiver: hook
  group_by: [alertname, host]
  group_wait: 0s
  group_interval: 1s
  routes:
{routes}
receivers:
  - name: hook
    webhook: {{ url: "http://{addr}/hook" }}
{more}
"#,
            routes = (0..receivers)
                .map(|r| format!("    - {{ match: {{ team: t{r} }}, receiver: r{r} }}\n"))
                .collect::<String>(),
            more = (0..receivers)
                .map(|r| format!("  - {{ name: r{r}, webhook: {{ url: \"http://{addr}/r{r}\" }} }}\n"))
                .collect::<String>(),
        );
        let (server, _rules) = start_server(bin, &yaml)?;
        if background > 0 {
            let alerts: Vec<serde_json::Value> = (0..background)
                .map(|i| {
                    serde_json::json!({
                        "labels": {"alertname": "Background", "host": format!("bg{i}"), "team": format!("t{}", i % receivers.max(1))},
                        "endsAt": "2099-01-01T00:00:00Z",
                    })
                })
                .collect();
            post_alerts(server.http, &alerts).await?;
            drained(server.http, Duration::from_secs(300)).await?;
            eprintln!("  {mode}: {background} firing alerts held, routed to {receivers} receivers");
        }
        // Warm up: the table exists and the first evaluation happened.
        sql(server.http, "INSERT INTO lat (ts, host, usage) VALUES (now(), 'warmup', 1)").await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut lat = Vec::with_capacity(runs);
        let before = EngineWork::read(server.http).await?;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..runs {
            // A pseudo-random phase against the rule interval.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            tokio::time::sleep(Duration::from_millis(seed % 1000)).await;
            let host = format!("h{i}");
            sql(server.http, &format!("INSERT INTO lat (ts, host, usage) VALUES (now(), '{host}', 99)")).await?;
            let acked = Instant::now();
            let got = sink
                .wait_for(Duration::from_secs(10), |r| {
                    r.body["status"] == "firing" && r.body["alerts"][0]["labels"]["host"] == host.as_str()
                })
                .await
                .with_context(|| format!("no notification for {host} within 10 s"))?;
            let arrived = got.at;
            lat.push(arrived.saturating_duration_since(acked).as_secs_f64() * 1000.0);
            if (i + 1) % 20 == 0 {
                eprintln!("  {mode}: {}/{runs}", i + 1);
            }
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "latency {mode:9} (interval {interval}, {background} firing alerts, {receivers} receivers): median {:.1} ms, p99 {:.1} ms, max {:.1} ms over {runs} writes",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        EngineWork::read(server.http).await?.since(&before).print(mode);
        drop(server);
    }
    Ok(())
}

/// The engine's work counters, to say where a round's time goes.
struct EngineWork {
    rounds: f64,
    dispatch_s: f64,
    saves: f64,
    save_s: f64,
}

impl EngineWork {
    async fn read(http: std::net::SocketAddr) -> anyhow::Result<EngineWork> {
        Ok(EngineWork {
            rounds: metric(http, "tocsin_alert_dispatch_rounds_total").await?,
            dispatch_s: metric(http, "tocsin_alert_dispatch_seconds_total").await?,
            saves: metric(http, "tocsin_alert_journal_records_total").await?,
            save_s: metric(http, "tocsin_alert_journal_seconds_total").await?,
        })
    }

    fn since(&self, before: &EngineWork) -> EngineWork {
        EngineWork {
            rounds: self.rounds - before.rounds,
            dispatch_s: self.dispatch_s - before.dispatch_s,
            saves: self.saves - before.saves,
            save_s: self.save_s - before.save_s,
        }
    }

    fn print(&self, mode: &str) {
        let per = |s: f64, n: f64| if n > 0.0 { s / n * 1000.0 } else { f64::NAN };
        println!(
            "  {mode}: {:.0} dispatch rounds, mean {:.2} ms; {:.0} journal records, mean {:.2} ms",
            self.rounds,
            per(self.dispatch_s, self.rounds),
            self.saves,
            per(self.save_s, self.saves)
        );
    }
}

async fn throughput(bin: &Path, alerts: usize) -> anyhow::Result<()> {
    let sink = WebhookSink::start(0).await?;
    let yaml = format!(
        "route:\n  receiver: hook\n  group_by: ['...']\n  group_wait: 0s\nreceivers:\n  - name: hook\n    webhook: {{ url: \"http://{}/hook\" }}\n",
        sink.addr
    );
    let (server, _rules) = start_server(bin, &yaml)?;
    let batch: Vec<serde_json::Value> = (0..alerts)
        .map(|i| serde_json::json!({"labels": {"alertname": "Tp", "host": format!("h{i}")}, "endsAt": "2099-01-01T00:00:00Z"}))
        .collect();
    let started = Instant::now();
    post_alerts(server.http, &batch).await?;
    let got = sink.wait_for_count(alerts, Duration::from_secs(600)).await;
    let last = got.iter().map(|r| r.at).max().context("nothing arrived")?;
    let secs = last.saturating_duration_since(started).as_secs_f64();
    if got.len() < alerts {
        bail!("only {} of {alerts} notifications arrived", got.len());
    }
    println!(
        "throughput: {alerts} notifications to one webhook receiver in {secs:.2} s: {:.0} notifications/s",
        alerts as f64 / secs
    );
    drop(server);
    Ok(())
}

async fn state(bin: &Path, alerts: usize, saves: usize) -> anyhow::Result<()> {
    let (mut server, _rules) = start_server(bin, "")?;
    // Alert `i`, with an end `n` seconds into 2099 (a new end is a change).
    let alert = |i: usize, n: usize| {
        serde_json::json!({
            "labels": {"alertname": "State", "host": format!("h{i}"), "job": "node", "instance": format!("10.0.{}.{}:9100", i / 250, i % 250)},
            "annotations": {"summary": format!("host h{i} is down")},
            "endsAt": format!("2099-01-01T00:00:{:02}Z", n % 60),
        })
    };
    let batch: Vec<serde_json::Value> = (0..alerts).map(|i| alert(i, 0)).collect();
    let started = Instant::now();
    post_alerts(server.http, &batch).await?;
    println!("posted {alerts} alerts in {:.2} s", started.elapsed().as_secs_f64());
    // One change with all of them held: the journal record it costs.
    let mut records = Vec::new();
    for n in 0..saves {
        let before = metric(server.http, "tocsin_alert_journal_records_total").await?;
        let before_s = metric(server.http, "tocsin_alert_journal_seconds_total").await?;
        post_alerts(server.http, &[alert(n, n + 1)]).await?;
        let until = Instant::now() + Duration::from_secs(10);
        let mut after = before;
        while after <= before && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            after = metric(server.http, "tocsin_alert_journal_records_total").await?;
        }
        let spent = metric(server.http, "tocsin_alert_journal_seconds_total").await? - before_s;
        records.push(spent * 1000.0 / (after - before).max(1.0));
    }
    records.sort_by(f64::total_cmp);
    println!(
        "journal record for one change with {alerts} alerts held: median {:.2} ms, max {:.2} ms over {saves} changes",
        percentile(&records, 0.5),
        records.last().copied().unwrap_or(f64::NAN)
    );
    // kill -9 and start again: the journal is replayed and folded into a
    // snapshot of the whole state.
    let mut snapshots = Vec::new();
    let mut restarts = Vec::new();
    for n in 0..saves {
        post_alerts(server.http, &[alert(n, saves + n + 1)]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        server.crash_and_restart()?;
        restarts.push(started.elapsed().as_secs_f64() * 1000.0);
        snapshots.push(metric(server.http, "tocsin_alert_state_save_last_seconds").await? * 1000.0);
        let firing = metric(server.http, "tocsin_alerts_firing").await?;
        if firing < alerts as f64 {
            bail!("after the restart {firing} alerts fire, {alerts} were posted");
        }
    }
    snapshots.sort_by(f64::total_cmp);
    restarts.sort_by(f64::total_cmp);
    let bytes = metric(server.http, "tocsin_alert_state_bytes").await?;
    println!(
        "snapshot of {alerts} alerts ({:.1} MiB): median {:.0} ms, max {:.0} ms; kill -9 to serving again (replay + snapshot): median {:.0} ms over {saves} restarts",
        bytes / (1 << 20) as f64,
        percentile(&snapshots, 0.5),
        snapshots.last().copied().unwrap_or(f64::NAN),
        percentile(&restarts, 0.5)
    );
    drop(server);
    Ok(())
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

async fn capacity(
    bin: &Path,
    rules: usize,
    series: usize,
    tables: usize,
    interval_secs: u64,
    measure_secs: u64,
) -> anyhow::Result<()> {
    let per_table = series / tables;
    let rules_per_table = rules / tables;
    let mut yaml = String::from("groups:\n");
    for t in 0..tables {
        yaml.push_str(&format!("  - name: g{t}\n    interval: {interval_secs}s\n    rules:\n"));
        for r in 0..rules_per_table {
            yaml.push_str(&format!(
                "      - alert: R{t}_{r}\n        sql: SELECT series, max(v{f}) AS value FROM m{t} WHERE ts > now() - INTERVAL '1 minute' GROUP BY series\n        thresholds: {{ critical: \"> {th}\" }}\n",
                f = r % 3,
                th = 1000 + r,
            ));
        }
    }
    let (server, _rules) = start_server(bin, &yaml)?;
    let pid = server.pid();
    eprintln!("loading {series} series in {tables} tables ...");
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as i64;
    let mut client =
        IngestClient::connect(format!("http://{}", server.grpc)).await?.max_encoding_message_size(256 << 20);
    // One sample every 10 s from 1 minute ago to 2 minutes ahead, so that
    // every evaluation during the measurement sees a full minute.
    let steps: Vec<i64> = (-6..12).map(|k| now_ns + k * 10_000_000_000).collect();
    let mut x: u64 = 1;
    for t in 0..tables {
        let mut rows = Vec::with_capacity(per_table);
        for s in 0..per_table {
            let mut col = |name: &str| {
                let values = steps
                    .iter()
                    .map(|_| {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        (x >> 40) as f64 / 167_772.16
                    })
                    .collect();
                FieldColumn { name: name.into(), values: Some(field_column::Values::F64(DoubleValues { values })) }
            };
            let fields = vec![col("v0"), col("v1"), col("v2")];
            rows.push(RowSeries {
                tags: vec![Label { name: "series".into(), value: format!("s{s}") }],
                timestamps: steps.clone(),
                fields,
            });
        }
        let resp = client
            .write_rows(WriteRowsRequest { database: String::new(), table: format!("m{t}"), series: rows })
            .await?
            .into_inner();
        if !resp.rejected.is_empty() {
            bail!("table m{t}: {:?}", resp.rejected.first());
        }
    }
    eprintln!("warming up for one interval ...");
    tokio::time::sleep(Duration::from_secs(interval_secs + 1)).await;
    let failed0 = metric(server.http, "tocsin_rule_evaluation_failures_total").await?;
    let (cpu0, ev0, evs0, t0) = (
        cpu_seconds(pid)?,
        metric(server.http, "tocsin_rule_evaluations_total").await?,
        metric(server.http, "tocsin_rule_evaluation_seconds_total").await?,
        Instant::now(),
    );
    for s in 0..measure_secs / 10 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        eprintln!("  measuring {} / {measure_secs} s", (s + 1) * 10);
    }
    let (cpu1, ev1, evs1, dt) = (
        cpu_seconds(pid)?,
        metric(server.http, "tocsin_rule_evaluations_total").await?,
        metric(server.http, "tocsin_rule_evaluation_seconds_total").await?,
        t0.elapsed().as_secs_f64(),
    );
    let failures = metric(server.http, "tocsin_rule_evaluation_failures_total").await? - failed0;
    let evals = ev1 - ev0;
    let expected = rules as f64 * dt / interval_secs as f64;
    println!(
        "capacity: {rules} rules over {series} series ({tables} tables, {per_table} series x 6 samples per rule query), interval {interval_secs} s"
    );
    println!(
        "  server CPU {:.2} cores; {:.0} evaluations in {:.0} s ({:.0}% of the {:.0} due), {failures} failed",
        (cpu1 - cpu0) / dt,
        evals,
        dt,
        100.0 * evals / expected,
        expected
    );
    println!(
        "  mean evaluation {:.2} ms; {:.0} rule x series checks per second",
        1000.0 * (evs1 - evs0) / evals.max(1.0),
        evals * per_table as f64 / dt
    );
    Ok(())
}
