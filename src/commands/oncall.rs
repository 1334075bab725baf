//! `tocsin oncall [--at TIME]`: who is on call in each schedule, and who is
//! next; `tocsin oncall override add|list|remove`: overrides through the
//! API.

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
    #[command(subcommand)]
    command: Option<OnCallCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum OnCallCommand {
    /// On-call overrides made through the API.
    #[command(subcommand)]
    Override(OverrideCommand),
}

#[derive(Debug, clap::Subcommand)]
enum OverrideCommand {
    /// Put MEMBER on call in SCHEDULE for a period.
    Add {
        #[arg(long)]
        schedule: String,
        #[arg(long)]
        member: String,
        /// How long, from --from (default now): `8h`, `2d`.
        #[arg(long, conflicts_with = "until", required_unless_present = "until")]
        duration: Option<String>,
        /// Until this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// From this time (RFC 3339); default now.
        #[arg(long)]
        from: Option<String>,
        /// Who makes it [default: $USER, $LOGNAME, or the process's user].
        #[arg(long)]
        by: Option<String>,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// List the overrides that have not ended.
    List,
    /// Remove an override.
    Remove { id: String },
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = c.server.client()?;
        if let Some(OnCallCommand::Override(cmd)) = c.command {
            return overrides(&client, cmd).await;
        }
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
                    cell(now, "from"),
                    cell(now, "until"),
                    if next.is_null() { "-".into() } else { cell(next, "member") },
                    cell(next, "from"),
                ]
            })
            .collect();
        println!("at {}", v["at"].as_str().unwrap_or(""));
        print_table(&["SCHEDULE", "ON CALL", "SINCE", "UNTIL", "NEXT", "FROM"], &rows);
        Ok(())
    })
}

async fn overrides(client: &super::client::Client, cmd: OverrideCommand) -> anyhow::Result<()> {
    const PATH: &str = "/api/v1/oncall/overrides";
    match cmd {
        OverrideCommand::Add { schedule, member, duration, until, from, by, comment } => {
            let mut body = serde_json::json!({"schedule": schedule, "member": member, "createdBy": super::client::who_acts(by)?, "comment": comment});
            let fields = [("duration", duration), ("endsAt", until), ("startsAt", from)];
            for (k, v) in fields {
                if let Some(v) = v {
                    body[k] = v.into();
                }
            }
            let v = client.call(Method::POST, PATH, Some(body)).await?;
            println!(
                "{} on call in {} from {} until {}",
                v["member"].as_str().unwrap_or(""),
                v["schedule"].as_str().unwrap_or(""),
                v["startsAt"].as_str().unwrap_or(""),
                v["endsAt"].as_str().unwrap_or("")
            );
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        OverrideCommand::List => {
            let v = client.call(Method::GET, PATH, None).await?;
            let cell = |o: &serde_json::Value, k: &str| o[k].as_str().unwrap_or("").to_string();
            let rows: Vec<Vec<String>> = v["overrides"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    ["id", "schedule", "member", "startsAt", "endsAt", "createdBy", "comment"]
                        .iter()
                        .map(|k| cell(o, k))
                        .collect()
                })
                .collect();
            print_table(&["ID", "SCHEDULE", "MEMBER", "FROM", "UNTIL", "BY", "COMMENT"], &rows);
        }
        OverrideCommand::Remove { id } => {
            client.call(Method::DELETE, &format!("{PATH}/{id}"), None).await?;
            println!("removed {id}");
        }
    }
    Ok(())
}
