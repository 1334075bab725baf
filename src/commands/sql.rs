//! `tocsin sql "SELECT ..."`: runs a statement over the HTTP API.

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// An aligned table.
    Table,
    Csv,
    Json,
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    /// The SQL statement.
    sql: String,
    #[command(flatten)]
    server: super::client::ServerArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Database to run in [default: public].
    #[arg(long, env = "TOCSIN_DATABASE")]
    database: Option<String>,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(query(c))
}

async fn query(c: Config) -> anyhow::Result<()> {
    let wire = match c.format {
        Format::Table => "arrow",
        Format::Csv => "csv",
        Format::Json => "json",
        Format::Jsonl => "jsonl",
    };
    let (url, req) = c.server.client()?.request(reqwest::Method::POST, "/api/v1/sql");
    let mut body = serde_json::json!({ "sql": c.sql, "format": wire });
    if let Some(db) = &c.database {
        body["database"] = serde_json::Value::String(db.clone());
    }
    let resp = req
        .json(&body)
        .send()
        .await
        .with_context(|| format!("while connecting to {url} (is `tocsin serve` running there?)"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.context("while reading the response")?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{msg} (HTTP {status})");
    }
    if c.format == Format::Table {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .context("while decoding the Arrow result")?;
        let batches = reader.collect::<Result<Vec<_>, _>>().context("while decoding the Arrow result")?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
        println!("{rows} row{}", if rows == 1 { "" } else { "s" });
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        if !bytes.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}
