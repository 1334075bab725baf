//! Helpers shared by the benchmark programs: starting a real `tocsin serve`,
//! talking to it over HTTP, and summarising timings.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// A `tocsin serve` started on ephemeral loopback ports over a temporary data
/// directory; killed and removed when dropped.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    extra: Vec<std::ffi::OsString>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `bin serve` with `config` (TOML, may be empty) and `extra`
    /// arguments; the server's log goes to `server.log` in its directory.
    pub fn start(bin: &Path, config: &str, extra: &[&std::ffi::OsStr]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("tocsin.toml"), config)?;
        let extra: Vec<std::ffi::OsString> = extra.iter().map(|a| a.to_os_string()).collect();
        let (child, http, grpc) = spawn(bin, dir.path(), &extra)?;
        Ok(Server { child, http, grpc, dir, bin: bin.to_path_buf(), extra })
    }

    /// Kills the server (`kill -9`) and starts it again on the same data
    /// directory and arguments.
    pub fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        let (child, http, grpc) = spawn(&self.bin, self.dir.path(), &self.extra)?;
        (self.child, self.http, self.grpc) = (child, http, grpc);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts `bin serve` in `dir` and reads the addresses it prints.
fn spawn(bin: &Path, dir: &Path, extra: &[std::ffi::OsString]) -> anyhow::Result<(Child, SocketAddr, SocketAddr)> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log"))?;
    let mut child = Command::new(bin)
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log", "warn"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(dir.join("tocsin.toml"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("while starting {} (build it with cargo build --release)", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = |key: &str| -> anyhow::Result<SocketAddr> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no {key} in {line:?}"))
    };
    match (addr("http="), addr("grpc=")) {
        (Ok(h), Ok(g)) => Ok((child, h, g)),
        (Err(e), _) | (_, Err(e)) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            Err(e.context(format!("server did not start; its log:\n{log}")))
        }
    }
}

/// Runs one SQL statement over HTTP and returns the rows (JSON objects).
pub async fn sql(http: SocketAddr, sql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/sql"))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("{sql}: {}", resp.text().await?);
    }
    Ok(resp.json().await?)
}

/// The value of an unlabelled metric on the server's `/metrics`.
pub async fn metric(http: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{http}/metrics")).await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no metric {name}"))
}

/// The `p` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// RFC 3339 UTC text of a nanosecond timestamp, whole seconds.
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(1_451_606_400_000_000_000), "2016-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
