//! `tocsin trace ID`: one business flow across every service that logged
//! it, in time order, with the time between hops and the first error marked.

use reqwest::Method;

use super::client::print_table;

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    /// The trace id.
    id: String,
    #[command(flatten)]
    server: super::client::ServerArgs,
    /// The log table.
    #[arg(long, default_value = "logs")]
    table: String,
    /// The database of the log table.
    #[arg(long, default_value = "public")]
    database: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v = runtime.block_on(c.server.client()?.call(
        Method::GET,
        &format!("/api/v1/trace/{}?table={}&database={}", c.id, c.table, c.database),
        None,
    ))?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let first_error = v["first_error"].as_u64().map(|i| i as usize);
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            vec![
                s("ts"),
                format!("+{:.1}", e["since_previous_ms"].as_f64().unwrap_or(0.0)),
                s("service"),
                s("host"),
                s("level"),
                s("message"),
                if Some(i) == first_error { "<-- first error".into() } else { String::new() },
            ]
        })
        .collect();
    print_table(&["TIME", "+MS", "SERVICE", "HOST", "LEVEL", "MESSAGE", ""], &rows);
    let hops: Vec<&str> =
        v["hops"].as_array().map(|a| a.iter().filter_map(|h| h.as_str()).collect()).unwrap_or_default();
    println!("{} events, {} ms, path: {}", events.len(), v["duration_ms"].as_f64().unwrap_or(0.0), hops.join(" -> "));
    Ok(())
}
