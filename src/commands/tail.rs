//! `tocsin tail`: follow the log stream live, with filters (Server-Sent
//! Events from `GET /api/v1/tail`).

use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    /// Only these services (repeatable).
    #[arg(long)]
    service: Vec<String>,
    /// Only these hosts (repeatable).
    #[arg(long)]
    host: Vec<String>,
    /// Minimum level, e.g. `warn` or `>=warn`.
    #[arg(long)]
    level: Option<String>,
    /// Only this trace id.
    #[arg(long)]
    trace_id: Option<String>,
    /// Case-insensitive text the message must contain.
    #[arg(long = "match")]
    text: Option<String>,
    /// Attribute equality `name=value` (repeatable).
    #[arg(long)]
    attr: Vec<String>,
    /// First show the stored events of this last span (e.g. `5m`, `1h`),
    /// then follow live; nothing is missed or repeated in between.
    #[arg(long)]
    since: Option<String>,
    /// The log table.
    #[arg(long, default_value = "logs")]
    table: String,
    /// The database of the log table.
    #[arg(long, default_value = "public")]
    database: String,
    /// Print each event as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: super::client::ServerArgs,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(follow(c))
}

async fn follow(c: Config) -> anyhow::Result<()> {
    let mut params: Vec<(&str, String)> = vec![("table", c.table.clone()), ("database", c.database.clone())];
    params.extend(c.service.iter().map(|s| ("service", s.clone())));
    params.extend(c.host.iter().map(|s| ("host", s.clone())));
    params.extend(c.attr.iter().map(|s| ("attr", s.clone())));
    if let Some(l) = &c.level {
        params.push(("level", l.trim_start_matches(">=").to_string()));
    }
    if let Some(t) = &c.trace_id {
        params.push(("trace_id", t.clone()));
    }
    if let Some(t) = &c.text {
        params.push(("match", t.clone()));
    }
    if let Some(s) = &c.since {
        params.push(("since", s.clone()));
    }
    let (url, req) = c.server.client()?.request(reqwest::Method::GET, "/api/v1/tail");
    let mut resp = req
        .query(&params)
        .send()
        .await
        .with_context(|| format!("while connecting to {url} (is `tocsin serve` running there?)"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        bail!("{} (HTTP {status})", resp.text().await.unwrap_or_default());
    }
    // Bytes, not text, until a whole line is in: a chunk may end inside a
    // multi-byte character.
    let mut buf: Vec<u8> = Vec::new();
    let mut event_kind = String::new();
    while let Some(chunk) = resp.chunk().await.context("while reading the stream")? {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&buf[..nl]).trim_end_matches('\r').to_string();
            buf.drain(..=nl);
            if let Some(kind) = line.strip_prefix("event:") {
                event_kind = kind.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                let v: serde_json::Value = serde_json::from_str(data.trim()).unwrap_or_default();
                if event_kind == "error" {
                    bail!("the server ended the tail: {}", v["error"].as_str().unwrap_or("unknown error"));
                } else if event_kind == "dropped" {
                    println!("-- {} events dropped (this terminal was too slow) --", v["dropped"]);
                } else if c.json {
                    println!("{v}");
                } else {
                    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                    println!("{} {} {} {:5} {}", s("ts"), s("service"), s("host"), s("level"), s("message"));
                }
            } else if line.is_empty() {
                event_kind.clear();
            }
        }
    }
    Ok(())
}
