//! `tocsin token create|list|revoke`: API tokens of a running server (the
//! caller's token needs the `users` permission, e.g. the bootstrap admin
//! token in `<data-dir>/admin-token`).

use reqwest::Method;
use serde_json::json;

use super::client::{ServerArgs, print_table};

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once, alone on the last line.
    Create {
        /// Role: admin, editor, viewer, writer, alerter, auditor, or a configured one.
        #[arg(long)]
        role: String,
        /// Restrict the token to one database.
        #[arg(long)]
        db: Option<String>,
        /// Expire after this long (`30d`, `12h`); default: never.
        #[arg(long)]
        expires: Option<String>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id: its next request is refused.
    Revoke {
        /// The token's id (from `tocsin token list`).
        id: String,
    },
}

fn time(v: &serde_json::Value) -> String {
    v.as_i64()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = c.server.client()?;
    runtime.block_on(async {
        match c.command {
            TokenCommand::Create { role, db, expires, description } => {
                let body = json!({ "role": role, "database": db, "expires": expires, "description": description });
                let v = client.call(Method::POST, "/api/v1/tokens", Some(body)).await?;
                eprintln!(
                    "created token {} (role {}, expires {}); it is shown once:",
                    v["id"].as_str().unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?"),
                    time(&v["expires_at"])
                );
                println!("{}", v["token"].as_str().unwrap_or_default());
            }
            TokenCommand::List { json } => {
                let v = client.call(Method::GET, "/api/v1/tokens", None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = v["tokens"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|t| {
                        let s = |k: &str| t[k].as_str().unwrap_or("-").to_string();
                        let state = if t["revoked_at"].is_number() {
                            "revoked"
                        } else if t["active"].as_bool() == Some(true) {
                            "active"
                        } else {
                            "expired"
                        };
                        vec![
                            s("id"),
                            s("role"),
                            s("database"),
                            state.into(),
                            time(&t["created_at"]),
                            time(&t["expires_at"]),
                            s("created_by"),
                            s("description"),
                        ]
                    })
                    .collect();
                print_table(&["ID", "ROLE", "DATABASE", "STATE", "CREATED", "EXPIRES", "BY", "DESCRIPTION"], &rows);
            }
            TokenCommand::Revoke { id } => {
                let v = client.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await?;
                println!("revoked token {}", v["id"].as_str().unwrap_or(&id));
            }
        }
        Ok(())
    })
}
