//! Peer databases started for side-by-side runs, and the HTTP load they
//! get: VictoriaMetrics on a temporary directory, bodies pushed over a few
//! connections, directory sizes and process memory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// POSTs every body with `concurrency` connections, in order of the slice
/// (each connection takes the next unsent body); values per second.
pub async fn push(
    url: &str,
    bodies: &[Vec<u8>],
    values: u64,
    concurrency: usize,
    headers: &[(&'static str, &'static str)],
) -> anyhow::Result<f64> {
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(bodies.iter().map(|b| bytes::Bytes::from(b.clone())).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (bodies, next, url) = (Arc::clone(&bodies), Arc::clone(&next), url.to_string());
        let headers = headers.to_vec();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { return Ok::<_, anyhow::Error>(()) };
                let mut req = client.post(&url).body(body.clone());
                for (k, v) in &headers {
                    req = req.header(*k, *v);
                }
                let resp = req.send().await?;
                if !resp.status().is_success() {
                    bail!("{url}: {} {}", resp.status(), resp.text().await.unwrap_or_default());
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("writer")??;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("  {url}: {values} values in {secs:.2} s");
    Ok(values as f64 / secs)
}

/// Bytes of the files under `p`, recursively.
pub fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Resident and peak resident memory of a process, bytes (`VmRSS`,
/// `VmHWM` in `/proc/PID/status`).
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .map(|k| k * 1024)
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// A peer database on loopback over a temporary directory.
pub struct Peer {
    pub child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (up to 20 s) until `url` answers with a success status.
pub async fn wait_up(url: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} did not come up")
}

impl Peer {
    /// The Debian package's `victoria-metrics` with 100 years of retention
    /// and `extra` flags.
    pub async fn victoria_metrics(extra: &[&str]) -> anyhow::Result<Peer> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new("victoria-metrics")
            .arg(format!("-storageDataPath={}", dir.path().join("data").display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting victoria-metrics (apt-get install victoria-metrics)")?;
        let base = format!("http://127.0.0.1:{port}");
        let peer = Peer { child, base, dir };
        wait_up(&format!("{}/health", peer.base)).await?;
        Ok(peer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Flushes, asks for a full merge, and waits until the data directory
    /// stops changing (two equal sizes 3 s apart, at most a minute): its
    /// settled size, not a moment of a background merge.
    pub async fn vm_flush_and_size(&self) -> anyhow::Result<u64> {
        reqwest::get(format!("{}/internal/force_flush", self.base)).await?;
        reqwest::get(format!("{}/internal/force_merge", self.base)).await?;
        let data = self.dir.path().join("data");
        let mut last = dir_size(&data);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = dir_size(&data);
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }

    /// The sum of VictoriaMetrics' own `vm_data_size_bytes` gauges.
    pub async fn vm_reported_size(&self) -> anyhow::Result<u64> {
        let text = reqwest::get(format!("{}/metrics", self.base)).await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("vm_data_size_bytes{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }
}
