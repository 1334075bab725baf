//! `tocsin-proto-bench`: the same TSBS `cpu-only` data pushed over
//! Prometheus remote_write into Tocsin and VictoriaMetrics, and over InfluxDB
//! line protocol into Tocsin, InfluxDB and VictoriaMetrics, in one run on
//! one machine. For each: values/s, bytes on disk, and the answers to the
//! same questions (per host max and count of `usage_user`), which must
//! agree across systems.
//!
//! The peers are the Debian packages `victoria-metrics` and `influxdb`
//! (see ../shared/PEERS.md); each run starts its target on a fresh temporary
//! directory and stops it afterwards.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use prost::Message;
use tocsin_bench::data::{self, FIELDS, HostData, INTERVAL_NS, START_NS};
use tocsin_bench::peers::{Peer, dir_size, free_port, push};
use tocsin_bench::util::{Server, metric, sql};
use tocsin_proto::prometheus::{Label, Sample, TimeSeries, WriteRequest};

#[derive(Debug, Parser)]
#[command(about = "remote_write and line protocol ingest: Tocsin vs VictoriaMetrics and InfluxDB")]
struct Args {
    #[arg(long, default_value = "target/release/tocsin")]
    tocsin: PathBuf,
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    #[arg(long, default_value_t = 24)]
    hours: usize,
    /// Concurrent HTTP connections per target.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Samples per host per request.
    #[arg(long, default_value_t = 100)]
    batch_steps: usize,
    /// Skip these targets (comma-separated: vm, influx).
    #[arg(long, default_value = "")]
    skip: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Per-host answers: (max of usage_user, number of usage_user samples).
type Answers = BTreeMap<String, (i64, u64)>;

struct Outcome {
    target: &'static str,
    protocol: &'static str,
    values_per_s: f64,
    disk_bytes: u64,
    answers: Answers,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let steps = args.hours * 360;
    let values = (args.hosts * steps * FIELDS.len()) as u64;
    let t = Instant::now();
    let hosts = data::generate(args.hosts, steps, args.seed);
    let lines = line_bodies(&hosts, steps, args.batch_steps);
    let remote = remote_write_bodies(&hosts, steps, args.batch_steps);
    eprintln!(
        "generated {} line protocol bodies ({:.1} MiB) and {} remote_write bodies ({:.1} MiB) in {:.1} s",
        lines.len(),
        lines.iter().map(Vec::len).sum::<usize>() as f64 / 1048576.0,
        remote.len(),
        remote.iter().map(Vec::len).sum::<usize>() as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    println!(
        "dataset: TSBS cpu-only, {} hosts x {} h at 10 s = {} values (integer-valued), {} connections per target",
        args.hosts, args.hours, values, args.concurrency
    );
    let end_s = (START_NS + steps as i64 * INTERVAL_NS) / 1_000_000_000;
    let mut outcomes = Vec::new();
    let skip: Vec<&str> = args.skip.split(',').collect();

    // Tocsin, remote_write.
    {
        let server = Server::start(&args.tocsin, "[storage]\npersist_max_mb = 4096\npersist_max_age = \"1d\"\n", &[])?;
        let url = format!("http://{}/api/v1/write", server.http);
        let vps = push(&url, &remote, values, args.concurrency, &[("content-encoding", "snappy")]).await?;
        let disk = tocsin_disk(&server).await?;
        let answers = tocsin_answers(
            &server,
            "SELECT hostname, max(value) AS m, count(*) AS n FROM cpu_usage_user GROUP BY hostname",
        )
        .await?;
        outcomes.push(Outcome {
            target: "Tocsin",
            protocol: "remote_write",
            values_per_s: vps,
            disk_bytes: disk,
            answers,
        });
    }
    // Tocsin, line protocol.
    {
        let server = Server::start(&args.tocsin, "[storage]\npersist_max_mb = 4096\npersist_max_age = \"1d\"\n", &[])?;
        let url = format!("http://{}/write?db=public", server.http);
        let vps = push(&url, &lines, values, args.concurrency, &[]).await?;
        let disk = tocsin_disk(&server).await?;
        let answers = tocsin_answers(
            &server,
            "SELECT hostname, max(usage_user) AS m, count(usage_user) AS n FROM cpu GROUP BY hostname",
        )
        .await?;
        outcomes.push(Outcome {
            target: "Tocsin",
            protocol: "line protocol",
            values_per_s: vps,
            disk_bytes: disk,
            answers,
        });
    }
    if !skip.contains(&"vm") {
        for (protocol, bodies, path, headers) in [
            ("remote_write", &remote, "/api/v1/write", &[("content-encoding", "snappy")][..]),
            ("line protocol", &lines, "/write", &[][..]),
        ] {
            let vm = Peer::victoria_metrics(&[]).await?;
            let vps = push(&format!("{}{path}", vm.base), bodies, values, args.concurrency, headers).await?;
            let disk = vm.vm_flush_and_size().await?;
            let reported = vm.vm_reported_size().await?;
            eprintln!("  VictoriaMetrics {protocol}: directory {disk} bytes, vm_data_size_bytes {reported}");
            println!(
                "VictoriaMetrics {protocol}: vm_data_size_bytes (its own account) {reported} = {:.3} B/value",
                reported as f64 / values as f64
            );
            let answers = vm_answers(&vm, end_s, steps).await?;
            outcomes.push(Outcome {
                target: "VictoriaMetrics",
                protocol,
                values_per_s: vps,
                disk_bytes: disk,
                answers,
            });
        }
    }
    if !skip.contains(&"influx") {
        let influx = start_influxdb().await?;
        let vps = push(&format!("{}/write?db=bench", influx.base), &lines, values, args.concurrency, &[]).await?;
        let disk = dir_size(influx.dir.path());
        let answers = influx_answers(&influx).await?;
        outcomes.push(Outcome {
            target: "InfluxDB",
            protocol: "line protocol",
            values_per_s: vps,
            disk_bytes: disk,
            answers,
        });
    }

    println!("{:<16} {:<14} {:>14} {:>14} {:>10}", "target", "protocol", "values/s", "disk bytes", "B/value");
    for o in &outcomes {
        println!(
            "{:<16} {:<14} {:>14.0} {:>14} {:>10.3}",
            o.target,
            o.protocol,
            o.values_per_s,
            o.disk_bytes,
            o.disk_bytes as f64 / values as f64
        );
    }
    let reference = &outcomes[0].answers;
    if reference.len() != args.hosts || reference.values().any(|(_, n)| *n != steps as u64) {
        bail!("Tocsin's own answer is incomplete: {} hosts", reference.len());
    }
    for o in &outcomes[1..] {
        if &o.answers != reference {
            let diff = reference.iter().find(|(h, a)| o.answers.get(*h) != Some(a));
            bail!(
                "{} ({}) disagrees with Tocsin: first difference {diff:?} vs {:?}",
                o.target,
                o.protocol,
                diff.map(|(h, _)| o.answers.get(h))
            );
        }
    }
    println!(
        "answers: per-host max(usage_user) and count agree across all {} runs ({} hosts)",
        outcomes.len(),
        reference.len()
    );
    Ok(())
}

/// TSBS' line protocol: one line per host and step, integer fields.
fn line_bodies(hosts: &[HostData], steps: usize, batch: usize) -> Vec<Vec<u8>> {
    use std::fmt::Write;
    let mut out = Vec::new();
    for start in (0..steps).step_by(batch) {
        let mut s = String::new();
        for step in start..(start + batch).min(steps) {
            for h in hosts {
                s.push_str("cpu");
                for l in &h.tags {
                    let _ = write!(s, ",{}={}", l.name, l.value);
                }
                for (i, f) in FIELDS.iter().enumerate() {
                    let _ = write!(s, "{}{f}={}i", if i == 0 { ' ' } else { ',' }, h.fields[i][step] as i64);
                }
                let _ = writeln!(s, " {}", START_NS + step as i64 * INTERVAL_NS);
            }
        }
        out.push(s.into_bytes());
    }
    out
}

/// The same samples as Prometheus series `cpu_<field>` with the host's tags.
fn remote_write_bodies(hosts: &[HostData], steps: usize, batch: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for start in (0..steps).step_by(batch) {
        let end = (start + batch).min(steps);
        let mut timeseries = Vec::with_capacity(hosts.len() * FIELDS.len());
        for h in hosts {
            for (i, f) in FIELDS.iter().enumerate() {
                let mut labels = vec![Label { name: "__name__".into(), value: format!("cpu_{f}") }];
                labels.extend(h.tags.iter().map(|l| Label { name: l.name.clone(), value: l.value.clone() }));
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                let samples = (start..end)
                    .map(|s| Sample {
                        value: h.fields[i][s] as i64 as f64,
                        timestamp: (START_NS + s as i64 * INTERVAL_NS) / 1_000_000,
                    })
                    .collect();
                timeseries.push(TimeSeries { labels, samples });
            }
        }
        let raw = WriteRequest { timeseries, metadata: vec![] }.encode_to_vec();
        out.push(snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default());
    }
    out
}

async fn tocsin_disk(server: &Server) -> anyhow::Result<u64> {
    reqwest::Client::new().post(format!("http://{}/api/v1/admin/persist", server.http)).send().await?;
    Ok(metric(server.http, "tocsin_segment_bytes").await? as u64)
}

async fn tocsin_answers(server: &Server, q: &str) -> anyhow::Result<Answers> {
    let rows = sql(server.http, q).await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r["hostname"].as_str()?.to_string(), (r["m"].as_f64()? as i64, r["n"].as_u64()?))))
        .collect())
}

/// Per-host max and count of `usage_user` in VictoriaMetrics (MetricsQL).
async fn vm_answers(vm: &Peer, end_s: i64, steps: usize) -> anyhow::Result<Answers> {
    // At the last sample's time, a window as long as the whole range.
    let (at, window) = (end_s - 10, steps as i64 * 10);
    let q = |expr: String| {
        let base = vm.base.clone();
        async move {
            let v: serde_json::Value = reqwest::Client::new()
                .get(format!("{base}/api/v1/query"))
                .query(&[("query", expr.as_str()), ("time", &at.to_string())])
                .send()
                .await?
                .json()
                .await?;
            let mut out = BTreeMap::new();
            for r in v["data"]["result"].as_array().context("vm result")? {
                let host = r["metric"]["hostname"].as_str().context("hostname")?.to_string();
                let val: f64 = r["value"][1].as_str().context("value")?.parse()?;
                out.insert(host, val);
            }
            Ok::<_, anyhow::Error>(out)
        }
    };
    let max = q(format!("max_over_time(cpu_usage_user[{window}s])")).await?;
    let count = q(format!("count_over_time(cpu_usage_user[{window}s])")).await?;
    Ok(max.into_iter().map(|(h, m)| (h.clone(), (m as i64, count.get(&h).copied().unwrap_or(0.0) as u64))).collect())
}

/// The Debian package's `influxd` (1.x) on a temporary directory, with a
/// database `bench`.
async fn start_influxdb() -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let (http, rpc) = (free_port()?, free_port()?);
    let conf = dir.path().join("influxdb.conf");
    let d = dir.path().display();
    std::fs::write(
        &conf,
        format!(
            "reporting-disabled = true\nbind-address = \"127.0.0.1:{rpc}\"\n[meta]\n  dir = \"{d}/meta\"\n\
             [data]\n  dir = \"{d}/data\"\n  wal-dir = \"{d}/wal\"\n  query-log-enabled = false\n\
             [http]\n  bind-address = \"127.0.0.1:{http}\"\n  log-enabled = false\n[monitor]\n  store-enabled = false\n"
        ),
    )?;
    let child = Command::new("influxd")
        .arg("-config")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting influxd (apt-get install influxdb)")?;
    let base = format!("http://127.0.0.1:{http}");
    let peer = Peer { child, base, dir };
    for _ in 0..200 {
        if reqwest::get(format!("{}/ping", peer.base)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reqwest::Client::new().post(format!("{}/query", peer.base)).form(&[("q", "CREATE DATABASE bench")]).send().await?;
    Ok(peer)
}

/// The same answers from InfluxDB (InfluxQL).
async fn influx_answers(influx: &Peer) -> anyhow::Result<Answers> {
    let v: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/query", influx.base))
        .query(&[("db", "bench"), ("q", "SELECT max(usage_user), count(usage_user) FROM cpu GROUP BY hostname")])
        .send()
        .await?
        .json()
        .await?;
    let mut out = BTreeMap::new();
    for s in v["results"][0]["series"].as_array().context("influx series")? {
        let host = s["tags"]["hostname"].as_str().context("hostname")?.to_string();
        let row = &s["values"][0];
        out.insert(host, (row[1].as_i64().context("max")?, row[2].as_u64().context("count")?));
    }
    Ok(out)
}
