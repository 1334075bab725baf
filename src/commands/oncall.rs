//! `tocsin oncall [--at TIME]`: who is on call in each schedule, and who is
//! next.

use reqwest::Method;

use super::client::print_table;

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    #[command(flatten)]
    server: super::client::ServerArgs,
    /// At this time (RFC 3339, e.g. 2026-12-24T20:00:00+08:00) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = c.server.client()?;
        let path = match &c.at {
            Some(at) => format!("/api/v1/oncall?at={}", at.replace('+', "%2B")),
            None => "/api/v1/oncall".into(),
        };
        let v = client.call(Method::GET, &path, None).await?;
        if c.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let cell = |s: &serde_json::Value, k: &str| s[k].as_str().unwrap_or("-").to_string();
        let rows: Vec<Vec<String>> = v["schedules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let (now, next) = (&s["now"], &s["next"]);
                vec![
                    cell(s, "schedule"),
                    if now.is_null() { "(nobody)".into() } else { cell(now, "member") },
                    cell(now, "until"),
                    if next.is_null() { "-".into() } else { cell(next, "member") },
                    cell(next, "from"),
                ]
            })
            .collect();
        println!("at {}", v["at"].as_str().unwrap_or(""));
        print_table(&["SCHEDULE", "ON CALL", "UNTIL", "NEXT", "FROM"], &rows);
        Ok(())
    })
}
