//! `tocsin trace ID`: one business flow across every service that logged
//! it or sent spans of it, in time order, with the time between entries,
//! each span's duration, the span tree as indentation, and the first error
//! marked.

use reqwest::Method;

use super::client::{print_table, shown, url_component};

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    /// The trace id.
    id: String,
    #[command(flatten)]
    server: super::client::ServerArgs,
    /// The log table.
    #[arg(long, default_value = "logs")]
    table: String,
    /// The span table (OTLP traces).
    #[arg(long, default_value = "spans")]
    spans: String,
    /// The database of the log and span tables.
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
        &format!(
            "/api/v1/trace/{}?table={}&spans={}&database={}",
            url_component(&c.id),
            url_component(&c.table),
            url_component(&c.spans),
            url_component(&c.database)
        ),
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
            let indent = "  ".repeat(e["depth"].as_u64().unwrap_or(0).min(20) as usize);
            let (what, duration) = if e["type"] == "span" {
                let mut what = format!("{indent}> {} [{}]", s("name"), s("kind"));
                if let Some(m) = e["status_message"].as_str() {
                    what.push_str(&format!(": {m}"));
                }
                (what, format!("{:.1}", e["duration_ms"].as_f64().unwrap_or(0.0)))
            } else {
                (format!("{indent}{}", s("message")), String::new())
            };
            vec![
                s("ts"),
                format!("+{:.1}", e["since_previous_ms"].as_f64().unwrap_or(0.0)),
                s("service"),
                s("host"),
                s("level"),
                what,
                duration,
                if Some(i) == first_error { "<-- first error".into() } else { String::new() },
            ]
        })
        .collect();
    print_table(&["TIME", "+MS", "SERVICE", "HOST", "LEVEL", "SPAN / MESSAGE", "MS", ""], &rows);
    let hops: Vec<&str> =
        v["hops"].as_array().map(|a| a.iter().filter_map(|h| h.as_str()).collect()).unwrap_or_default();
    let (spans, logs) = (v["spans"].as_u64().unwrap_or(0), v["logs"].as_u64().unwrap_or(0));
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let counted = if spans == 0 {
        plural(logs, "event", "events")
    } else {
        format!("{}, {}", plural(spans, "span", "spans"), plural(logs, "log event", "log events"))
    };
    println!(
        "{counted}, {:.1} ms, path: {}{}",
        v["duration_ms"].as_f64().unwrap_or(0.0),
        shown(&hops.join(" -> ")),
        if v["truncated"] == true { " (truncated: the first 10,000 entries of each table)" } else { "" }
    );
    Ok(())
}
