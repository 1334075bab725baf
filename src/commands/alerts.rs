//! `tocsin alerts ...` and `tocsin silences ...`: the alerting API from the
//! command line.

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, print_table};

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    #[command(flatten)]
    server: super::client::ServerArgs,
    #[command(subcommand)]
    command: AlertCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AlertCommand {
    /// List alerts (not inactive ones).
    List {
        /// Only this state: pending, firing, resolved or active.
        #[arg(long)]
        state: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an alert: its escalation stops.
    Ack(Who),
    /// Withdraw an acknowledgement.
    Unack(Who),
    /// Resolve an alert by hand.
    Resolve(Who),
}

#[derive(Debug, clap::Args)]
struct Who {
    /// The alert's id (from `tocsin alerts list`).
    id: String,
    /// Who acts [default: $USER, $LOGNAME, or the process's user].
    #[arg(long)]
    by: Option<String>,
    #[arg(long, default_value = "")]
    comment: String,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = c.server.client()?;
        match c.command {
            AlertCommand::List { state, json } => {
                let path = match &state {
                    Some(s) => format!("/api/v1/alerts?state={s}"),
                    None => "/api/v1/alerts".into(),
                };
                let v = client.call(Method::GET, &path, None).await?;
                let alerts = v["alerts"].as_array().cloned().unwrap_or_default();
                if json {
                    println!("{}", serde_json::to_string_pretty(&alerts)?);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = alerts.iter().map(alert_row).collect();
                print_table(&["ID", "ALERT", "STATE", "SEVERITY", "VALUE", "SINCE", "ACKED BY", "LABELS"], &rows);
                Ok(())
            }
            AlertCommand::Ack(w) => act(&client, "ack", w).await,
            AlertCommand::Unack(w) => act(&client, "unack", w).await,
            AlertCommand::Resolve(w) => act(&client, "resolve", w).await,
        }
    })
}

async fn act(client: &Client, verb: &str, w: Who) -> anyhow::Result<()> {
    let v = client
        .call(
            Method::POST,
            &format!("/api/v1/alerts/{}/{verb}", w.id),
            Some(json!({"by": super::client::who_acts(w.by)?, "comment": w.comment})),
        )
        .await?;
    println!("{} {}: {} ({})", verb, w.id, v["alertname"].as_str().unwrap_or(""), v["state"].as_str().unwrap_or(""));
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn alert_row(a: &Value) -> Vec<String> {
    let labels: Vec<String> = a["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "alertname" && *k != "severity")
                .map(|(k, v)| format!("{k}={}", s(v)))
                .collect()
        })
        .unwrap_or_default();
    vec![
        s(&a["id"]),
        s(&a["alertname"]),
        s(&a["state"]),
        s(&a["severity"]),
        s(&a["value"]),
        s(&a["activeSince"]),
        s(&a["ack"]["by"]),
        labels.join(","),
    ]
}

#[derive(Debug, clap::Args)]
pub(crate) struct SilenceConfig {
    #[command(flatten)]
    server: super::client::ServerArgs,
    #[command(subcommand)]
    command: SilenceCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SilenceCommand {
    /// List the active and pending silences.
    List {
        /// Expired ones too (kept a while after they end).
        #[arg(long)]
        all: bool,
    },
    /// Add a silence: `--match host=web-1 --match job=~"api.*" --duration 2h`.
    Add {
        /// `name=value`, `name!=value`, `name=~regex` or `name!~regex`.
        #[arg(long = "match", required = true)]
        matchers: Vec<String>,
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Who silences [default: $USER, $LOGNAME, or the process's user].
        #[arg(long)]
        by: Option<String>,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Expire a silence now.
    Expire { id: String },
}

fn parse_matcher(m: &str) -> anyhow::Result<Value> {
    for (op, is_regex, is_equal) in [("!~", true, false), ("=~", true, true), ("!=", false, false), ("=", false, true)]
    {
        if let Some((name, value)) = m.split_once(op) {
            let value = value.trim_matches('"');
            return Ok(json!({"name": name, "value": value, "isRegex": is_regex, "isEqual": is_equal}));
        }
    }
    anyhow::bail!("{m:?} is not a matcher like name=value, name!=value, name=~regex or name!~regex")
}

pub(crate) fn run_silences(c: SilenceConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = c.server.client()?;
        match c.command {
            SilenceCommand::List { all } => {
                let v = client.call(Method::GET, "/api/v1/silences", None).await?;
                let rows: Vec<Vec<String>> = v["silences"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter(|s_| all || s_["status"]["state"] != "expired")
                    .map(|s_| {
                        let m: Vec<String> = s_["matchers"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|m| {
                                let op = match (m["isRegex"].as_bool(), m["isEqual"].as_bool()) {
                                    (Some(true), Some(false)) => "!~",
                                    (Some(true), _) => "=~",
                                    (_, Some(false)) => "!=",
                                    _ => "=",
                                };
                                format!("{}{op}{}", s(&m["name"]), s(&m["value"]))
                            })
                            .collect();
                        vec![
                            s(&s_["id"]),
                            s(&s_["status"]["state"]),
                            m.join(","),
                            s(&s_["startsAt"]),
                            s(&s_["endsAt"]),
                            s(&s_["createdBy"]),
                            s(&s_["comment"]),
                        ]
                    })
                    .collect();
                print_table(&["ID", "STATE", "MATCHERS", "STARTS", "ENDS", "BY", "COMMENT"], &rows);
            }
            SilenceCommand::Add { matchers, duration, by, comment } => {
                let matchers = matchers.iter().map(|m| parse_matcher(m)).collect::<anyhow::Result<Vec<_>>>()?;
                let v = client
                    .call(
                        Method::POST,
                        "/api/v1/silences",
                        Some(json!({"matchers": matchers, "duration": duration, "createdBy": super::client::who_acts(by)?, "comment": comment})),
                    )
                    .await?;
                println!("{}", s(&v["silenceID"]));
            }
            SilenceCommand::Expire { id } => {
                client.call(Method::DELETE, &format!("/api/v1/silences/{id}"), None).await?;
                println!("expired {id}");
            }
        }
        Ok(())
    })
}
